"""Plumbing every layer shares; none of it knows about models or pictures, and most imports no torch.

``errors`` (``FeatvisError``: every user-fixable problem, one line), ``failures`` (a user model's
exception or warning turned into that line), ``fileio`` (atomic writes, writable folders), ``settings``
(``FEATVIS_*`` environment), ``devices`` (``check_device``), ``choices`` (option values shared by the API
and the CLI), ``progress`` (tqdm on a TTY), ``heap`` (returning freed memory), ``html`` (escaped tags),
``reprs`` (short reprs of results), ``callable_module`` (``featvis.saliency(...)``-style packages), ``lazy``
(names imported on first use).
"""
