"""Reading and storing data.

- ``sources``: file specs -> opened trees -> work items (file, entry range) -> chunks.
- ``expressions``: columns and selections as vectorized expressions over branches.
- ``edm4hep``: hit collections resolved to their MCParticles (both schema generations).
- ``dataset``: the parquet shard store with its ``manifest.json``.
"""
