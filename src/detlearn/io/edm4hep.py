"""EDM4hep hit collections resolved to the MCParticles that made them, for every event at once.

podio writes a collection ``C`` as leaves ``C.<member>`` (struct members split further:
``C.position.x``) and a one-to-one relation as a parallel branch of object ids whose
``.index`` leaf holds, per hit, the position of its particle within the same event's particle
collection. Three spellings of that relation exist in files in the wild:

========================================  ==================  ===========================
relation index leaf                       energy leaf          written by
========================================  ==================  ===========================
``_C_particle.index``                     ``C.eDep``           EDM4hep >= 0.99 (ddsim 2023+)
``_C_MCParticle.index``                   ``C.EDep``           EDM4hep < 0.99 (older ddsim)
``C#0.index``                             ``C.EDep``           podio < 0.17 (before mid-2023)
========================================  ==================  ===========================

``read_hits`` accepts all three and always names the energy field ``eDep``. Units are EDM4hep's:
mm, ns, GeV. The relation's ``collectionID`` is not checked: a hit collection's particle
relation is assumed to point into the chosen particle collection (``MCParticles`` for ddsim).

ddsim writes a calorimeter's sensitive detector as ``SimCalorimeterHit`` instead: per cell a hit
``C.{cellID, energy, position.x/y/z}`` whose one-to-many relation ``contributions`` lists its
``CaloHitContribution`` s, the deposits of single Geant4 steps, in the collection
``CContributions.{PDG, energy, time, stepLength, stepPosition.x/y/z}`` (EPIC's
``HcalBarrelHits`` + ``HcalBarrelHitsContributions``; a file with one contribution collection
of another name, as EDM4hep's own example writer makes, uses that one). Hit ``h`` owns the entries
``C.contributions_begin[h]`` up to ``C.contributions_end[h]`` of the relation's index leaf, each
a position in ``CContributions``; each contribution links to its MCParticle (the particle of
the step, or its nearest ancestor that ddsim kept):

========================================  ==========================================  ==========
hit -> contributions index leaf           contribution -> particle index leaf         written by
========================================  ==========================================  ==========
``_C_contributions.index``                ``_CContributions_particle.index``          podio >= 0.17
``C#0.index``                             ``CContributions#0.index``                  podio < 0.17
========================================  ==========================================  ==========

``detect_schema`` tells the layouts apart by what the file holds (``C.contributions_begin``).
On the calorimeter layout ``read_hits`` yields one record per contribution, in hit order: its
own ``time``, ``eDep`` (its ``energy``), ``position.*`` (its ``stepPosition.*``), ``PDG``,
``stepLength``, and its hit's ``cellID``; ``particle_*`` are the linked MCParticle's.

Example:
    >>> tree = uproot.open("sim.root")["events"]                          # doctest: +SKIP
    >>> hits, n_unlinked = read_hits(tree, "HcalBarrelHits", 0, 100)      # doctest: +SKIP
    >>> photons = hits[hits.particle_PDG == -22]                          # doctest: +SKIP
    >>> photons.time                     # [ns], per event: var * float32  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import awkward as ak
import numpy as np
import uproot

from detlearn.errors import DetlearnError

__all__ = [
    "HIT_FIELDS",
    "PARTICLE_FIELDS",
    "HitSchema",
    "detect_schema",
    "hit_collections",
    "particle_collections",
    "read_hits",
    "read_particles",
]

HIT_FIELDS = ("time", "eDep", "position.x", "position.y", "position.z", "cellID")
PARTICLE_FIELDS = ("PDG", "mass", "time", "vertex.x", "vertex.y", "vertex.z")
PARTICLE_FIELDS += ("momentum.x", "momentum.y", "momentum.z")

_ENERGY_NAMES = ("eDep", "EDep")
# An MCParticle collection has these leaves; ReconstructedParticle shares PDG and momentum but
# has no production vertex.
_PARTICLE_SIGNATURE = ("PDG", "momentum.x", "vertex.x")


def _relation_candidates(collection: str) -> tuple[str, ...]:
    return (
        f"_{collection}_particle.index",
        f"_{collection}_MCParticle.index",
        f"{collection}#0.index",
    )


def _contribution_candidates(collection: str) -> tuple[str, ...]:
    """Index leaves of a SimCalorimeterHit collection's relation to its contributions."""
    return (f"_{collection}_contributions.index", f"{collection}#0.index")


#: Calorimeter layout: fields of a contribution under the names of a tracker hit's fields.
_CONTRIBUTION_NAMES = {"eDep": "energy", "EDep": "energy"} | {
    f"position.{c}": f"stepPosition.{c}" for c in "xyz"
}
#: The leaves that make a collection a CaloHitContribution collection.
_CONTRIBUTION_SIGNATURE = frozenset({"PDG", "energy", "time", "stepPosition.x"})
#: Calorimeter layout: fields read from a contribution's hit (the cell), not the contribution.
_CELL_FIELDS = frozenset({"cellID"})


@dataclass(frozen=True)
class HitSchema:
    """Where one hit collection's data live in a tree (leaf names as ``tree.arrays`` takes them).

    Attributes:
        collection: the hit collection, e.g. ``HcalBarrelHits``.
        relation: the leaf with each hit's particle index, e.g. ``_HcalBarrelHits_particle.index``
            (calorimeter layout: each contribution's, ``_HcalBarrelHitsContributions_particle``).
        energy: the deposited-energy leaf [GeV], ``C.eDep`` or ``C.EDep`` (calorimeter layout:
            the contribution's ``energy``); None if absent.
        particles: the particle collection the relation points into, e.g. ``MCParticles``.
        contributions: calorimeter layout (SimCalorimeterHit): the contribution collection,
            e.g. ``HcalBarrelHitsContributions``; None for tracker hits.
        contribution_index: calorimeter layout: the index leaf of the hits' relation to their
            contributions, e.g. ``_HcalBarrelHits_contributions.index``.
    """

    collection: str
    relation: str
    energy: str | None
    particles: str
    contributions: str | None = None
    contribution_index: str | None = None

    @property
    def calorimeter(self) -> bool:
        """Whether the collection is SimCalorimeterHits with contributions."""
        return self.contributions is not None

    def hit_leaf(self, field: str) -> str:
        """The leaf of a hit field; ``eDep`` and ``EDep`` both mean the energy leaf. On the
        calorimeter layout a field is the contribution's (``position.*`` its
        ``stepPosition.*``), except ``cellID``, its hit's."""
        if field in _ENERGY_NAMES and self.energy is not None:
            return self.energy
        if self.contributions is None or field in _CELL_FIELDS:
            return f"{self.collection}.{field}"
        return f"{self.contributions}.{_CONTRIBUTION_NAMES.get(field, field)}"


def _leaves(keys: Collection[str]) -> set[str]:
    """Leaf names without their parent branch (``C/C.time`` -> ``C.time``)."""
    return {key.rsplit("/", 1)[-1] for key in keys}


def _members(leaves: set[str]) -> dict[str, set[str]]:
    """Collection name -> its member leaves (``position.x``, ...)."""
    out: dict[str, set[str]] = {}
    for leaf in leaves:
        name, dot, member = leaf.partition(".")
        if dot and not name.startswith("_") and "#" not in name:
            out.setdefault(name, set()).add(member)
    return out


def hit_collections(keys: Collection[str]) -> list[str]:
    """Collections with hit positions and a relation to particles, or (calorimeter hits) to
    contributions: what ``read_hits`` reads."""
    leaves = _leaves(keys)
    return sorted(
        name
        for name, members in _members(leaves).items()
        if "position.x" in members
        and any(r in leaves for r in _relation_candidates(name) + _contribution_candidates(name))
    )


def particle_collections(keys: Collection[str]) -> list[str]:
    """Collections that look like MCParticles (leaves ``PDG``, ``momentum.x``, ``vertex.x``)."""
    return sorted(
        name
        for name, members in _members(_leaves(keys)).items()
        if all(m in members for m in _PARTICLE_SIGNATURE)
    )


def _particles(keys: Collection[str], particles: str | None, where: str) -> str:
    """The particle collection: the one named, else MCParticles, else the only candidate."""
    candidates = particle_collections(keys)
    listed = ", ".join(candidates) if candidates else "none"
    if particles is not None:
        if particles not in _members(_leaves(keys)):
            raise DetlearnError(
                f"{where}: no particle collection '{particles}' (MCParticle collections in this "
                f"file: {listed})"
            )
        return particles
    if "MCParticles" in candidates or len(candidates) == 1:
        return "MCParticles" if "MCParticles" in candidates else candidates[0]
    if not candidates:
        raise DetlearnError(
            f"{where}: no MCParticle collection (one with leaves .PDG, .momentum.x, .vertex.x)"
        )
    raise DetlearnError(
        f"{where}: several MCParticle-like collections ({listed}); name the one to use"
    )


def detect_schema(
    keys: Collection[str], collection: str, particles: str | None = None, where: str = ""
) -> HitSchema:
    """Find the relation, energy leaf and particle collection of hit collection ``collection``.

    Args:
        keys: the tree's branch names, as leaf names (``C.time``) or full paths (``C/C.time``).
        collection: the hit collection, e.g. ``HcalBarrelHits``.
        particles: the particle collection; None picks ``MCParticles`` if present, else the only
            collection that looks like MCParticles (e.g. ``MCParticleCollection``).
        where: location for error messages (the file).

    Raises:
        DetlearnError: an unknown hit collection (listing those present), one without a particle
            relation, or no (or an ambiguous) particle collection.

    Example:
        >>> s = detect_schema(["H.time", "H.EDep", "_H_MCParticle.index", "MCParticles.PDG"],
        ...                   "H", particles="MCParticles")
        >>> s.relation, s.hit_leaf("eDep")
        ('_H_MCParticle.index', 'H.EDep')
    """
    where = where or "input"
    leaves = _leaves(keys)
    members = _members(leaves).get(collection, set())
    if "contributions_begin" in members:
        return _calorimeter_schema(keys, collection, particles, where)
    relation = next((r for r in _relation_candidates(collection) if r in leaves), None)
    if not members or relation is None:
        present = ", ".join(hit_collections(keys)) or "none"
        expected = _relation_candidates(collection)[0]
        problem = (
            f"collection '{collection}' has no particle relation ({expected})"
            if members
            else f"no hit collection '{collection}'"
        )
        raise DetlearnError(f"{where}: {problem} (hit collections in this file: {present})")
    energy = next((f"{collection}.{e}" for e in _ENERGY_NAMES if e in members), None)
    return HitSchema(collection, relation, energy, _particles(keys, particles, where))


def _calorimeter_schema(
    keys: Collection[str], collection: str, particles: str | None, where: str
) -> HitSchema:
    """The schema of SimCalorimeterHit collection ``collection`` (see the module docstring)."""
    leaves = _leaves(keys)
    members = _members(leaves)
    index = next((r for r in _contribution_candidates(collection) if r in leaves), None)
    if index is None:
        expected = _contribution_candidates(collection)[0]
        raise DetlearnError(
            f"{where}: calorimeter collection '{collection}' has no relation to its "
            f"contributions ({expected})"
        )
    # ddsim names it after the hit collection; EDM4hep's own writer has one of another name.
    contributions = f"{collection}Contributions"
    if not _CONTRIBUTION_SIGNATURE <= members.get(contributions, set()):
        present = sorted(n for n, m in members.items() if _CONTRIBUTION_SIGNATURE <= m)
        if len(present) != 1:
            raise DetlearnError(
                f"{where}: no contribution collection '{contributions}' for calorimeter "
                f"collection '{collection}' (contribution collections in this file: "
                f"{', '.join(present) or 'none'})"
            )
        contributions = present[0]
    relation = next((r for r in _relation_candidates(contributions) if r in leaves), None)
    if relation is None:
        expected = _relation_candidates(contributions)[0]
        raise DetlearnError(
            f"{where}: contribution collection '{contributions}' has no particle relation "
            f"({expected})"
        )
    return HitSchema(
        collection,
        relation,
        f"{contributions}.energy",
        _particles(keys, particles, where),
        contributions=contributions,
        contribution_index=index,
    )


def _keys(tree: uproot.TTree) -> list[str]:
    if isinstance(tree, uproot.TTree):
        return list(tree.keys(recursive=True, full_paths=False))
    return list(tree.keys())


def _field_name(field: str) -> str:
    """The output name of a field: ``eDep`` for either energy spelling, dots as underscores."""
    return "eDep" if field in _ENERGY_NAMES else field.replace(".", "_")


def _check(leaves: Sequence[str], keys: set[str], collection: str, where: str) -> None:
    prefix = f"{collection}."
    for leaf in leaves:
        if leaf not in keys:
            fields = sorted(k[len(prefix) :] for k in keys if k.startswith(prefix))
            raise DetlearnError(
                f"{where}: no leaf '{leaf}' in collection '{collection}' (its fields: "
                f"{', '.join(fields) or 'none'})"
            )


def _read(
    tree: uproot.TTree, leaves: Sequence[str], entry_start: int, entry_stop: int, where: str
) -> ak.Array:
    try:
        return tree.arrays(
            list(dict.fromkeys(leaves)),
            entry_start=entry_start,
            entry_stop=entry_stop,
            library="ak",
        )
    except Exception as err:
        raise DetlearnError(
            f"{where}: cannot read {', '.join(leaves)} in entries [{entry_start}, {entry_stop}): "
            f"{type(err).__name__} (truncated or corrupt file?)"
        ) from None


def read_particles(
    tree: uproot.TTree,
    entry_start: int,
    entry_stop: int,
    fields: Sequence[str] = PARTICLE_FIELDS,
    particles: str | None = None,
    where: str = "",
) -> ak.Array:
    """Per-event lists of particle records with ``fields`` (dots as underscores: ``vertex_x``).

    Units: mm, ns, GeV. ``particles`` as in ``detect_schema``.

    Example:
        >>> p = read_particles(tree, 0, 10, ("PDG", "momentum.z"))       # doctest: +SKIP
        >>> p[:, 0].momentum_z              # the primary's p_z [GeV]     # doctest: +SKIP
    """
    where = where or tree.file.file_path
    keys = _keys(tree)
    name = _particles(keys, particles, where)
    if not fields:
        raise DetlearnError(f"{where}: no particle fields asked for")
    leaves = [f"{name}.{field}" for field in fields]
    _check(leaves, _leaves(keys), name, where)
    arrays = _read(tree, leaves, entry_start, entry_stop, where)
    return ak.zip({_field_name(f): arrays[leaf] for f, leaf in zip(fields, leaves, strict=True)})


def read_hits(
    tree: uproot.TTree,
    collection: str,
    entry_start: int,
    entry_stop: int,
    hit_fields: Sequence[str] = HIT_FIELDS,
    particle_fields: Sequence[str] = PARTICLE_FIELDS,
    particles: str | None = None,
    where: str = "",
) -> tuple[ak.Array, int]:
    """Per-event lists of hits, each with its own fields and its particle's as ``particle_*``.

    Args:
        tree: the ``events`` tree.
        collection: the hit collection, e.g. ``HcalBarrelHits`` or ``SimTrackerHitCollection``.
        entry_start, entry_stop: the entry range read (only the leaves needed are read).
        hit_fields: hit members; ``eDep`` reads ``eDep`` or ``EDep``, whichever the file has.
        particle_fields: members of the linked particle, output as ``particle_<field>`` with
            dots as underscores (``particle_momentum_x``).
        particles: the particle collection, as in ``detect_schema``.
        where: location for error messages (default: the file path).

    Returns:
        ``(hits, n_unlinked)``: hits as ``n_events * var * {field...}`` and the number of hits
        dropped because their particle index was invalid (negative, or past the event's
        particles). Events without hits keep an empty list.

    Raises:
        DetlearnError: unknown collection or field, or relation and hit counts that disagree.
    """
    where = where or tree.file.file_path
    if not hit_fields and not particle_fields:
        raise DetlearnError(f"{where}: no hit or particle fields asked for")
    keys = _keys(tree)
    schema = detect_schema(keys, collection, particles, where)
    if schema.calorimeter:
        return _read_contributions(
            tree, schema, entry_start, entry_stop, hit_fields, particle_fields, where
        )
    hit_leaves = [schema.hit_leaf(f) for f in hit_fields]
    # The particle count per event bounds the indices, so one particle leaf is always read.
    particle_leaves = [f"{schema.particles}.{f}" for f in (particle_fields or ("PDG",))]
    leaves = _leaves(keys)
    _check(hit_leaves, leaves, collection, where)
    _check(particle_leaves, leaves, schema.particles, where)
    arrays = _read(
        tree, [schema.relation, *hit_leaves, *particle_leaves], entry_start, entry_stop, where
    )
    index = arrays[schema.relation]
    for leaf in hit_leaves:
        if not ak.all(ak.num(arrays[leaf]) == ak.num(index)):
            raise DetlearnError(
                f"{where}: '{schema.relation}' and '{leaf}' disagree on the number of hits"
            )
    n_particles = ak.num(arrays[particle_leaves[0]])
    linked = (index >= 0) & (index < n_particles)
    n_unlinked = int(ak.sum(~linked))
    index = index[linked]
    record = {
        _field_name(f): arrays[leaf][linked] for f, leaf in zip(hit_fields, hit_leaves, strict=True)
    }
    for field, leaf in zip(particle_fields, particle_leaves, strict=False):
        record[f"particle_{_field_name(field)}"] = arrays[leaf][index]
    return ak.zip(record), n_unlinked


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices ``starts[i] .. starts[i] + lengths[i] - 1`` of every range, concatenated.

    Example:
        >>> _ranges(np.array([5, 0]), np.array([2, 3])).tolist()
        [5, 6, 0, 1, 2]
    """
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)


def _flat(array: ak.Array) -> np.ndarray:
    return ak.to_numpy(ak.flatten(array, axis=1))


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _read_contributions(
    tree: uproot.TTree,
    schema: HitSchema,
    entry_start: int,
    entry_stop: int,
    hit_fields: Sequence[str],
    particle_fields: Sequence[str],
    where: str,
) -> tuple[ak.Array, int]:
    """``read_hits`` on the calorimeter layout: one record per contribution, in hit order."""
    collection, contributions = schema.collection, str(schema.contributions)
    begin, end = f"{collection}.contributions_begin", f"{collection}.contributions_end"
    field_leaves = [schema.hit_leaf(f) for f in hit_fields]
    particle_leaves = [f"{schema.particles}.{f}" for f in (particle_fields or ("PDG",))]
    leaves = _leaves(_keys(tree))
    _check([begin, end], leaves, collection, where)
    for field, leaf in zip(hit_fields, field_leaves, strict=True):
        owner = collection if field in _CELL_FIELDS else contributions
        _check([leaf], leaves, owner, where)
    _check(particle_leaves, leaves, schema.particles, where)
    index = str(schema.contribution_index)
    arrays = _read(
        tree,
        [begin, end, index, schema.relation, *field_leaves, *particle_leaves],
        entry_start,
        entry_stop,
        where,
    )
    n_events = len(arrays[begin])
    hits_per_event = ak.to_numpy(ak.num(arrays[begin]))
    first = _flat(arrays[begin]).astype(np.int64)
    last = _flat(arrays[end]).astype(np.int64)
    event_of_hit = np.repeat(np.arange(n_events), hits_per_event)
    refs_per_event = ak.to_numpy(ak.num(arrays[index]))
    if np.any(first > last) or np.any(last > refs_per_event[event_of_hit]):
        raise DetlearnError(
            f"{where}: '{begin}' / '{end}' point outside '{index}' (a corrupt relation)"
        )
    per_hit = last - first
    refs = _ranges(_offsets(refs_per_event)[event_of_hit] + first, per_hit)
    event = np.repeat(event_of_hit, per_hit)
    hit = np.repeat(np.arange(len(first)), per_hit)
    local = _flat(arrays[index]).astype(np.int64)[refs]
    contributions_per_event = ak.to_numpy(ak.num(arrays[schema.relation]))
    exists = (local >= 0) & (local < contributions_per_event[event])
    contribution = np.where(exists, _offsets(contributions_per_event)[event] + local, 0)
    particle = np.full(len(contribution), -1, dtype=np.int64)
    particle[exists] = _flat(arrays[schema.relation]).astype(np.int64)[contribution[exists]]
    particles_per_event = ak.to_numpy(ak.num(arrays[particle_leaves[0]]))
    linked = exists & (particle >= 0) & (particle < particles_per_event[event])
    counts = np.bincount(event[linked], minlength=n_events)
    record = {}
    for field, leaf in zip(hit_fields, field_leaves, strict=True):
        rows = hit if field in _CELL_FIELDS else contribution
        record[_field_name(field)] = ak.unflatten(_flat(arrays[leaf])[rows[linked]], counts)
    at = (_offsets(particles_per_event)[event] + particle)[linked]
    for field, leaf in zip(particle_fields, particle_leaves, strict=False):
        record[f"particle_{_field_name(field)}"] = ak.unflatten(_flat(arrays[leaf])[at], counts)
    return ak.zip(record), int(np.count_nonzero(~linked))
