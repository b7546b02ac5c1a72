"""The one exception type users see: a clear, single-line message and exit code 2."""

from __future__ import annotations

__all__ = ["DetlearnError"]


class DetlearnError(Exception):
    """A problem with the user's input (file, branch, column, key, config).

    The message is one line and names the offending file, branch, column or key.
    The CLI prints it without a traceback and exits with code 2.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
