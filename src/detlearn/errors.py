"""The one exception type users see (a clear, single-line message and exit code 2), and the
base of detlearn's warnings (one line from the CLI)."""

from __future__ import annotations

__all__ = ["DetlearnError", "DetlearnWarning"]


class DetlearnError(Exception):
    """A problem with the user's input (file, branch, column, key, config).

    The message is one line and names the offending file, branch, column or key.
    The CLI prints it without a traceback and exits with code 2.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class DetlearnWarning(UserWarning):
    """Something the user should know that does not stop the job (a model extrapolating, a
    dataset made from another config). The CLI prints it as one line on stderr."""
