"""Errors for bad user input. The CLI prints their message (which names the case and the fix) without a
traceback and exits with status 2."""


class NnunetExtError(Exception):
    """Base class of the user-facing errors of nnunet-ext."""
