"""A user's mistake is an InputError: one sentence naming the file or layer and the problem.

The widget shows it as a napari notification, the CLI prints it and exits 2. Anything else is a bug.
"""


class InputError(ValueError):
    """Bad input detected before any training step or file write."""


class Cancelled(Exception):
    """The user cancelled; whatever was finished (best checkpoint, written files) stays valid."""
