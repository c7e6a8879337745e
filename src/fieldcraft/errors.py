"""The one exception type fieldcraft raises for bad input.

Readers and validators raise :class:`FieldcraftError` with a single line that names the
file (or argument) and the problem; the command line prints it as
``fieldcraft: error: <message>`` and exits with status 2, with no traceback.
"""


class FieldcraftError(ValueError):
    """Bad input or configuration, explained in one line."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`FieldcraftError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise FieldcraftError(message)
