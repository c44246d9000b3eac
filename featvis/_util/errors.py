"""The one exception featvis raises for problems a user can fix."""


class FeatvisError(ValueError):
    """A user-facing problem: the message is one line naming the problem and the fix.

    The CLI prints it without a traceback and exits with code 2.
    """
