"""Files that are never half-written, and their checksums.

Every file detlearn writes goes through :func:`atomic_path`: a temp file in the same folder,
renamed onto the final name only once it is complete, so a killed job or a full disk never
leaves a half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import xxhash

from detlearn.errors import DetlearnError

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_out_folder",
    "file_checksum",
    "nearest_existing",
    "read_json_object",
    "remove_temp_files",
]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp file beside ``path`` to fill in the block; renamed onto ``path`` if the block
    succeeds, removed if it fails, so no reader ever sees a half-written ``path``.

    A full disk (or quota) is a one-line :class:`DetlearnError` naming ``path``.

    Example:
        >>> with atomic_path(tmp / "out.root") as part:  # doctest: +SKIP
        ...     write_root(part)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; give the file the mode an ordinary open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            raise DetlearnError(
                f"{path}: disk full (no space left on device) while writing it (left as it "
                "was); free some space and run again"
            ) from err
        raise


#: The errors of a full disk and of a used-up quota.
_NO_SPACE = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file's object; a one-line :class:`DetlearnError` when it is unreadable, not
    valid JSON (NaN and Infinity are not) or not an object."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except OSError as err:
        raise DetlearnError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise DetlearnError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        raise DetlearnError(f"{path}: not valid JSON ({err.msg})") from None
    except ValueError as err:
        raise DetlearnError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise DetlearnError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically; NaN or inf (invalid JSON) is an error."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        raise DetlearnError(f"{path}: refusing to write NaN or inf (not valid JSON)") from None
    atomic_write_bytes(path, (text + "\n").encode())


def file_checksum(path: Path) -> str:
    """A file's checksum as written in the manifest: ``xxh3:<16 hex digits>``.

    XXH3-64, a non-cryptographic hash made to catch corruption: ~10 GB/s here, so checking a
    shard read back from the page cache costs a few per cent of writing it (CRC-32 ran at
    3.7 GB/s). A shard recorded with another kind of checksum (``crc32:``, older detlearn)
    never matches, and is redone.
    """
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return f"xxh3:{xxhash.xxh3_64_hexdigest(b'')}"
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return f"xxh3:{xxhash.xxh3_64_hexdigest(view)}"


def remove_temp_files(folder: Path, names: str = "*") -> None:
    """Remove the temp files :func:`atomic_path` left in ``folder`` for files matching the glob
    ``names`` (``.<name>.<random>.tmp``): a killed writer's, which no rerun would reuse."""
    if folder.is_dir():
        for stale in folder.glob(f".{names}.*.tmp"):
            stale.unlink(missing_ok=True)


def nearest_existing(path: Path) -> Path:
    """``path`` made absolute, or its nearest parent that exists (the root at worst): where
    a folder to be made at ``path`` would be created.

    Example:
        >>> nearest_existing(Path("/") / "no" / "such" / "folder")
        PosixPath('/')
    """
    path = path.absolute()
    return next(p for p in (path, *path.parents) if p.exists())


def check_out_folder(
    out: Path, kind: str, why_not: Callable[[Path], str | None] | None = None
) -> None:
    """Refuse, in one line naming the path, an ``--out`` folder detlearn must not write into,
    before any work: a file; a folder that cannot be made or written (the nearest existing
    folder at or above it is not writable); a folder holding files that is not a ``kind``
    (``why_not(out)`` says why it is not, None when it is; without ``why_not`` the caller
    checks the files it meets itself). A new or empty folder is fine.

    Example:
        >>> check_out_folder(Path(__file__), "run folder")
        Traceback (most recent call last):
        ...
        detlearn.errors.DetlearnError: ...: --out is a file, not a run folder
    """
    if out.exists() and not out.is_dir():
        article = "an" if kind[0] in "aeiou" else "a"
        raise DetlearnError(f"{out}: --out is a file, not {article} {kind}")
    nearest = nearest_existing(out)
    if not nearest.is_dir():
        raise DetlearnError(f"{out}: --out lies under {nearest}, a file; give it a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        where = "" if nearest == out.absolute() else f" (its nearest existing parent {nearest})"
        raise DetlearnError(f"{out}: --out is not writable{where}; give it a folder you can write")
    if why_not is None or not out.is_dir() or not any(out.iterdir()):
        return
    why = why_not(out)
    if why is not None:
        raise DetlearnError(f"{out}: {why}; give --out a new, empty or {kind}")
