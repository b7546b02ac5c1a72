"""detlearn: from detector-simulation ROOT files to trained, validated, deployable ML models.

The package is layered; each layer imports only from the layers below it (an import-linter
contract in ``pyproject.toml``, run by ``make test``, keeps it so). Bottom to top:

- ``errors``; ``_files`` (atomic writes, checksums), ``_blocks`` (seeded threaded blocks);
  ``config`` (the pydantic schema of a run config).
- ``io``: ROOT inputs (uproot, entry-range chunks), branch expressions, EDM4hep relations, the
  parquet dataset store (shards + ``manifest.json``) and its splits by group; ``parallel``:
  executors behind ``concurrent.futures.Executor`` (local, dask, slurm).
- ``data``: binning, held-out labels, the rows a model trains on, tensors.
- ``plots``: the HEP plot style and shared figures.
- ``models``: zuko flows, count models, regressors, their safe on-disk form.
- ``training``: Lightning training of any model.
- ``runs``: the typed run artifact (``run.json``) and each family's trained-run handle.
- ``evaluation``, ``report``, ``export``: metrics, ``report.html``, ONNX.
- ``families``: the registry of model families that train, load, export and evaluate use.
- ``recipes``: the physics (simulators, extractors, default configs, validation suites).
- ``prepare``, ``pipeline``, ``cli``: ROOT files -> dataset; the whole path; the command.
"""

from __future__ import annotations

__all__ = ["DetlearnError", "__version__"]

__version__ = "0.1.0"

from detlearn import _threads
from detlearn.errors import DetlearnError

# Before any submodule imports torch or numba, whose thread pools read it once.
_threads.apply()
