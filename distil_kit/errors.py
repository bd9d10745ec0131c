"""The kit's one error type: a one-line message naming what was wrong and what was expected."""


class KitError(ValueError):
    """Bad input or a run that cannot go on. The message is one line, fit to print as is."""
