"""The one exception featvis raises for problems a user can fix, and the signal a command stops on."""


class FeatvisError(ValueError):
    """A user-facing problem: the message is one line naming the problem and the fix.

    The CLI prints it without a traceback and exits with code 2.
    """


class Terminated(BaseException):
    """SIGTERM reached a command that stops cleanly on it (``featvis serve``): exit code 143 (128 + 15),
    as a process the signal ended. A BaseException, like KeyboardInterrupt: no handler of errors stops it."""
