"""detlearn: from detector-simulation ROOT files to trained, validated, deployable ML models.

The package is layered; each layer imports only the ones above it in this list:

- ``errors``, ``config``: user-facing error type and the pydantic schema of a run config.
- ``io``: ROOT inputs (uproot, entry-range chunks), branch expressions, EDM4hep relations,
  and the parquet dataset store (shards + ``manifest.json``).
- ``data``: deterministic splits by group, numpy/torch views of a prepared dataset.
- ``parallel``: executors behind ``concurrent.futures.Executor`` (local, dask, slurm).
- ``prepare``: ROOT files -> dataset directory, resumable.
- ``models``, ``training``: zuko flows and other models, Lightning training.
- ``run``, ``evaluation``, ``report``, ``export``: trained run directories and their uses.
- ``recipes``: the physics (simulators, extractors, default configs); the core never imports them.
- ``cli``: the ``detlearn`` command, a thin shell over the functions above.
"""

from __future__ import annotations

__all__ = ["DetlearnError", "__version__"]

__version__ = "0.1.0"

from detlearn.errors import DetlearnError
