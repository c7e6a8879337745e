"""The one exception type fieldcraft raises for bad input.

Readers and validators raise :class:`FieldcraftError` with a single line that names the
file (or argument) and the problem; the command line prints it as
``fieldcraft: error: <message>`` and exits with status 2, with no traceback.

:func:`reading` wraps a reader's parsing of a file's contents so that whatever the parsing code
raises on malformed contents (a missing key, a wrong type, tensors that do not fit) becomes that
one line too.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path


class FieldcraftError(ValueError):
    """Bad input or configuration, explained in one line."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`FieldcraftError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise FieldcraftError(message)


def describe(exc: BaseException, limit: int = 300) -> str:
    """A one-line description of an exception (``missing 'key'`` for a KeyError).

    >>> describe(KeyError("value_scale")), describe(RuntimeError("Error(s) in loading:\\n\\tsize mismatch"))
    ("missing 'value_scale'", 'Error(s) in loading: size mismatch')
    """
    if isinstance(exc, KeyError) and exc.args:
        return f"missing {exc.args[0]!r}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[:2]) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def reading(path: str | Path, what: str = "file") -> Iterator[None]:
    """Inside the block, a :class:`FieldcraftError` that does not name ``path`` gets the prefix
    ``<path>: malformed <what>:``, and
    the exceptions that parsing malformed contents raises (``KeyError``, ``IndexError``,
    ``TypeError``, ``ValueError``, ``AttributeError``, ``RuntimeError``) become one line
    ``<path>: malformed <what> (<description>)``.

    >>> with reading("run/checkpoint.safetensors", "checkpoint header"):
    ...     {}["config"]
    Traceback (most recent call last):
    fieldcraft.errors.FieldcraftError: run/checkpoint.safetensors: malformed checkpoint header (missing 'config')
    """
    try:
        yield
    except FieldcraftError as exc:
        if str(path) in str(exc):
            raise
        raise FieldcraftError(f"{path}: malformed {what}: {exc}") from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise FieldcraftError(f"{path}: malformed {what} ({describe(exc)})") from None
