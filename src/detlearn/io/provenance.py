"""Which program wrote a ROOT file: a JSON record in a ``TObjString`` named ``detlearn``.

detlearn's writers (the recipes' simulators and ``detlearn fastsim``) put one in every file
they write; ``detlearn prepare`` records it per input in the dataset's manifest, so a run
knows whether its data came from a recipe's built-in simulator (and only then is compared
with that simulator's exact truth). A user's own ddsim/Geant4 file has none. The record is
plain JSON, never executed or unpickled.

Example:
    >>> with uproot.recreate(tmp / "f.root") as f:                        # doctest: +SKIP
    ...     write_provenance(f, {"writer": "detlearn simulate", "recipe": "klm-timing"})
    >>> read_provenance(tmp / "f.root")["recipe"]                         # doctest: +SKIP
    'klm-timing'
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import uproot
from pydantic import BaseModel
from uproot.models.TObjString import Model_TObjString

from detlearn import __version__

__all__ = [
    "PROVENANCE_KEY",
    "read_provenance",
    "simulator_difference",
    "simulator_provenance",
    "write_provenance",
]

#: Name of the record in the file.
PROVENANCE_KEY = "detlearn"
#: The writer a recipe's built-in simulator records.
SIMULATOR = "detlearn simulate"
#: The longest record read back [characters]; a longer one is not detlearn's.
_MAX_CHARS = 65_536


def simulator_provenance(recipe: str, options: BaseModel, seed: int, file: int) -> dict[str, Any]:
    """The record of file number ``file`` written by ``recipe``'s built-in simulator with
    ``options`` (its validated ``simulate`` settings) from master ``seed``."""
    return {
        "writer": SIMULATOR,
        "recipe": recipe,
        "detlearn_version": __version__,
        "options": options.model_dump(mode="json"),
        "seed": seed,
        "file": file,
    }


def simulator_difference(
    record: Mapping[str, Any] | None,
    recipe: str,
    options: Mapping[str, Any],
    ignore: Collection[str] = (),
) -> tuple[str, Any, Any] | None:
    """The first way a file's ``record`` is not one ``recipe``'s simulator writes with
    ``options`` (validated, as JSON; keys in ``ignore`` may differ): ``("writer", have, want)``
    (``have`` None without a record), ``("recipe", have, want)`` or ``(option, have, want)``;
    None when there is none. The seed is not compared."""
    if not record or record.get("writer") != SIMULATOR:
        return ("writer", record.get("writer") if record else None, SIMULATOR)
    if record.get("recipe") != recipe:
        return ("recipe", record.get("recipe"), recipe)
    have = record.get("options") or {}
    for key in sorted((set(options) | set(have)) - set(ignore)):
        if have.get(key) != options.get(key):
            return (key, have.get(key), options.get(key))
    return None


def write_provenance(file: Any, record: Mapping[str, Any]) -> None:
    """Store ``record`` (JSON-serializable) in an open writable uproot file."""
    file[PROVENANCE_KEY] = json.dumps(dict(record), sort_keys=True, allow_nan=False)


def read_provenance(path: str | Path) -> dict[str, Any] | None:
    """The provenance record of the ROOT file at ``path``; None when it has none, it is not
    a JSON object, or the file cannot be read."""
    try:
        with uproot.open(path) as f:
            if PROVENANCE_KEY not in f.keys(recursive=False, cycle=False):
                return None
            obj = f[PROVENANCE_KEY]
            if not isinstance(obj, Model_TObjString) or len(obj) > _MAX_CHARS:
                return None
            record = json.loads(str(obj))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record, dict) else None
