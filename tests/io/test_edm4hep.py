"""EDM4hep hits linked to their MCParticles: the real example file and ddsim-layout files in
every relation spelling, checked against a plain Python loop over events."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from detlearn.errors import DetlearnError
from detlearn.io.edm4hep import detect_schema, hit_collections, read_hits, read_particles

EDM4HEP_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "edm4hep"
EXAMPLE = EDM4HEP_DIR / "edm4hep.root"

# Relation branch and energy leaf of each schema generation (see the module docstring).
SCHEMAS = {
    "edm4hep>=0.99": ("_HcalBarrelHits_particle", "eDep"),
    "edm4hep<0.99": ("_HcalBarrelHits_MCParticle", "EDep"),
    "podio<0.17": ("HcalBarrelHits#0", "EDep"),
}
PDG = [[13, -22, -22, 11], [13], [13, -22], [-13, -22, -22]]
RELATION = [[1, 2, 0, 3], [], [1, -1], [2, 1, 5]]  # -1 and 5 point nowhere


@pytest.fixture
def example_tree():
    if not EXAMPLE.exists():
        pytest.skip(f"../shared/data/edm4hep not present: {EXAMPLE} is the EDM4hep example file")
    with uproot.open(EXAMPLE) as f:
        yield f["events"]


@pytest.fixture
def ddsim_tree(tmp_path):
    """Opens a fresh ddsim-layout file of the given schema; closed after the test."""
    with ExitStack() as stack:

        def open_tree(schema: str) -> uproot.TTree:
            path = write_ddsim(tmp_path / "klm.root", schema)
            return stack.enter_context(uproot.open(path))["events"]

        yield open_tree


def write_ddsim(path: Path, schema: str, seed: int = 0) -> Path:
    """A ddsim-like KLM file: tree ``events``, ``MCParticles.*``, ``HcalBarrelHits.*`` + relation."""
    relation, energy = SCHEMAS[schema]
    rng = np.random.default_rng(seed)

    def jagged(counts: list[int], dtype: str, scale: float = 100.0) -> ak.Array:
        return ak.unflatten(rng.uniform(0, scale, sum(counts)).astype(dtype), counts)

    n_particles = [len(p) for p in PDG]
    n_hits = [len(r) for r in RELATION]
    particles = {"PDG": ak.values_astype(ak.Array(PDG), "int32")}
    particles |= {
        "mass": jagged(n_particles, "float64", 1.0),
        "time": jagged(n_particles, "float32"),
    }
    for vec in ("vertex", "momentum"):
        particles |= {f"{vec}.{c}": jagged(n_particles, "float64") for c in "xyz"}
    hits = {"cellID": ak.values_astype(jagged(n_hits, "float64", 1e6), "uint64")}
    hits |= {energy: jagged(n_hits, "float32", 1e-3), "time": jagged(n_hits, "float32")}
    hits |= {f"position.{c}": jagged(n_hits, "float64") for c in "xyz"}
    index = ak.values_astype(ak.Array(RELATION), "int32")
    columns = {
        "MCParticles": ak.zip(particles),
        "HcalBarrelHits": ak.zip(hits),
        relation: ak.zip(
            {"index": index, "collectionID": ak.values_astype(index * 0 + 7, "uint32")}
        ),
    }
    with uproot.recreate(path) as f:
        f.mktree(
            "events",
            {k: ak.type(v).content for k, v in columns.items()},
            field_name=lambda outer, inner: f"{outer}.{inner}",
        )
        f["events"].extend(columns)
    return path


def python_loop_link(tree: uproot.TTree, particles: str, relation: str, field: str):
    """The oracle: each hit's particle field looked up event by event, index by index."""
    values = tree[f"{particles}.{field}"].array(library="np")
    indices = tree[relation].array(library="np")
    return [
        [values[e][i] for i in indices[e] if 0 <= i < len(values[e])] for e in range(len(indices))
    ]


def test_real_file_links_simtrackerhits_to_mcparticlecollection(example_tree):
    hits, n_unlinked = read_hits(example_tree, "SimTrackerHitCollection", 0, 3)
    relation = example_tree["_SimTrackerHitCollection_particle.index"].array()
    assert n_unlinked == 0
    assert ak.num(hits).tolist() == ak.num(relation).tolist()
    expected = python_loop_link(
        example_tree,
        "MCParticleCollection",
        "_SimTrackerHitCollection_particle.index",
        "PDG",
    )
    assert hits["particle_PDG"].tolist() == expected
    assert hits["eDep"].tolist() == example_tree["SimTrackerHitCollection.eDep"].array().tolist()


def test_real_file_schema_from_full_path_keys(example_tree):
    schema = detect_schema(
        example_tree.keys(recursive=True, full_paths=True), "SimTrackerHitCollection"
    )
    assert schema.relation == "_SimTrackerHitCollection_particle.index"
    assert schema.energy == "SimTrackerHitCollection.eDep"
    # ReconstructedParticleCollection has PDG and momentum too, but no vertex.
    assert schema.particles == "MCParticleCollection"


def test_real_file_unknown_collection_lists_hit_collections(example_tree):
    with pytest.raises(
        DetlearnError,
        match=r"edm4hep.root: no hit collection 'HcalBarrelHits' \(hit collections in this "
        r"file: SimCalorimeterHitCollection, SimTrackerHitCollection\)",
    ):
        read_hits(example_tree, "HcalBarrelHits", 0, 3)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_ddsim_hits_link_to_particles_in_every_schema(ddsim_tree, schema):
    tree = ddsim_tree(schema)
    relation = f"{SCHEMAS[schema][0]}.index"
    hits, n_unlinked = read_hits(tree, "HcalBarrelHits", 0, 4)
    assert n_unlinked == 2
    assert ak.num(hits).tolist() == [4, 0, 1, 2]  # the event without hits keeps an empty list
    assert hits.fields[:6] == ["time", "eDep", "position_x", "position_y", "position_z", "cellID"]
    for field in ("PDG", "momentum.z", "vertex.x", "time"):
        expected = python_loop_link(tree, "MCParticles", relation, field)
        assert hits[f"particle_{field.replace('.', '_')}"].tolist() == expected
    linked = [[0 <= i < len(p) for i in r] for r, p in zip(RELATION, PDG, strict=True)]
    edep = tree[f"HcalBarrelHits.{SCHEMAS[schema][1]}"].array().tolist()
    assert hits["eDep"].tolist() == [
        [e for e, ok in zip(ev, oks, strict=True) if ok]
        for ev, oks in zip(edep, linked, strict=True)
    ]


def test_optical_photon_selection_reads_as_in_klm(ddsim_tree):
    tree = ddsim_tree("edm4hep>=0.99")
    hits, _ = read_hits(
        tree, "HcalBarrelHits", 0, 4, hit_fields=("time",), particle_fields=("PDG",)
    )
    assert ak.num(hits[hits.particle_PDG == -22]).tolist() == [2, 0, 1, 2]


def test_entry_range_reads_only_those_events(ddsim_tree):
    tree = ddsim_tree("edm4hep<0.99")
    hits, n_unlinked = read_hits(tree, "HcalBarrelHits", 2, 4, particle_fields=("PDG",))
    assert ak.num(hits).tolist() == [1, 2] and n_unlinked == 2
    assert hits["particle_PDG"].tolist() == [[-22], [-22, -22]]


def test_only_needed_leaves_are_read(ddsim_tree, monkeypatch):
    tree = ddsim_tree("edm4hep>=0.99")
    asked = []
    real = tree.arrays
    monkeypatch.setattr(
        tree, "arrays", lambda leaves, **kw: asked.append(leaves) or real(leaves, **kw)
    )
    read_hits(tree, "HcalBarrelHits", 0, 4, hit_fields=("eDep",), particle_fields=("PDG",))
    assert asked == [["_HcalBarrelHits_particle.index", "HcalBarrelHits.eDep", "MCParticles.PDG"]]


def test_no_particle_fields_still_drops_unlinked_hits(ddsim_tree):
    tree = ddsim_tree("edm4hep>=0.99")
    hits, n_unlinked = read_hits(
        tree, "HcalBarrelHits", 0, 4, hit_fields=("time",), particle_fields=()
    )
    assert hits.fields == ["time"] and n_unlinked == 2 and ak.num(hits).tolist() == [4, 0, 1, 2]


def test_primary_is_particle_zero(ddsim_tree):
    tree = ddsim_tree("edm4hep>=0.99")
    particles = read_particles(tree, 0, 4, ("PDG", "momentum.x"))
    assert particles.fields == ["PDG", "momentum_x"]
    assert particles[:, 0].PDG.tolist() == [13, 13, 13, -13]
    px = tree["MCParticles.momentum.x"].array()
    assert particles[:, 0].momentum_x.tolist() == [event[0] for event in px.tolist()]


def test_missing_hit_field_lists_the_fields(ddsim_tree):
    tree = ddsim_tree("edm4hep>=0.99")
    with pytest.raises(
        DetlearnError,
        match=r"klm.root: no leaf 'HcalBarrelHits.pathLength' in "
        r"collection 'HcalBarrelHits' \(its fields: cellID, eDep, position.x",
    ):
        read_hits(tree, "HcalBarrelHits", 0, 4, hit_fields=("pathLength",))


def test_unknown_collection_lists_those_present(ddsim_tree):
    tree = ddsim_tree("edm4hep<0.99")
    with pytest.raises(
        DetlearnError,
        match=r"no hit collection 'EcalBarrelHits' \(hit collections "
        r"in this file: HcalBarrelHits\)",
    ):
        read_hits(tree, "EcalBarrelHits", 0, 4)


def test_unknown_particle_collection_lists_candidates(ddsim_tree):
    tree = ddsim_tree("edm4hep<0.99")
    with pytest.raises(
        DetlearnError,
        match=r"no particle collection 'MCParticleCollection' "
        r"\(MCParticle collections in this file: MCParticles\)",
    ):
        read_particles(tree, 0, 4, ("PDG",), particles="MCParticleCollection")


def test_particle_collection_choice():
    leaves = ["A.PDG", "A.momentum.x", "A.vertex.x", "B.PDG", "B.momentum.x", "B.vertex.x"]
    hits = ["H.position.x", "_H_particle.index"]
    with pytest.raises(DetlearnError, match=r"several MCParticle-like collections \(A, B\)"):
        detect_schema([*leaves, *hits], "H")
    assert detect_schema([*leaves, *hits], "H", particles="B").particles == "B"
    mc = ["MCParticles.PDG", "MCParticles.momentum.x", "MCParticles.vertex.x"]
    assert detect_schema([*leaves, *hits, *mc], "H").particles == "MCParticles"
    with pytest.raises(DetlearnError, match="no MCParticle collection"):
        detect_schema(hits, "H")


def test_collection_without_relation_is_named():
    keys = ["C.position.x", "C.energy", "H.position.x", "_H_MCParticle.index", "MCParticles.PDG"]
    with pytest.raises(
        DetlearnError,
        match=r"collection 'C' has no particle relation "
        r"\(_C_particle.index\) \(hit collections in this file: H\)",
    ):
        detect_schema(keys, "C", particles="MCParticles")
    assert hit_collections(keys) == ["H"]


# ddsim's calorimeter layout (SimCalorimeterHit + CaloHitContribution): the hits' relation to
# their contributions and the contributions' relation to MCParticles, in both podio spellings.
CALO_SCHEMAS = {
    "podio>=0.17": ("_HcalBarrelHits_contributions", "_HcalBarrelHitsContributions_particle"),
    "podio<0.17": ("HcalBarrelHits#0", "HcalBarrelHitsContributions#0"),
}
CONTRIBUTION_PARTICLE = [[0, 1, 2, 9], [], [0, -1], [2, 1, 0]]  # 9 and -1 point nowhere
CONTRIBUTION_PDG = [[13, -22, -22, 11], [], [13, 11], [-22, -22, -13]]
HIT_RANGES = [[(0, 2), (2, 4)], [(0, 0)], [(0, 2)], [(0, 1), (1, 4)]]  # begin, end per hit
CONTRIBUTION_INDEX = [[3, 1, 0, 2], [], [1, 0], [2, 0, 7, 1]]  # 7 points nowhere


def write_calorimeter(path: Path, schema: str, seed: int = 0) -> Path:
    """A ddsim-like file of SimCalorimeterHits ``HcalBarrelHits`` with their contributions
    ``HcalBarrelHitsContributions``, linked to ``MCParticles`` (the particles of ``PDG``)."""
    to_contributions, to_particles = CALO_SCHEMAS[schema]
    rng = np.random.default_rng(seed)

    def jagged(counts: list[int], dtype: str, scale: float = 100.0) -> ak.Array:
        return ak.unflatten(rng.uniform(0, scale, sum(counts)).astype(dtype), counts)

    n_particles = [len(p) for p in PDG]
    particles = {"PDG": ak.values_astype(ak.Array(PDG), "int32")}
    particles |= {f"{vec}.{c}": jagged(n_particles, "float64") for vec in ("vertex", "momentum")
                  for c in "xyz"}  # fmt: skip
    n_hits = [len(r) for r in HIT_RANGES]
    hits = {"cellID": ak.values_astype(jagged(n_hits, "float64", 1e6), "uint64")}
    hits |= {"energy": jagged(n_hits, "float32", 1e-3)}
    hits |= {f"position.{c}": jagged(n_hits, "float32") for c in "xyz"}
    for k, name in enumerate(("contributions_begin", "contributions_end")):
        hits[name] = ak.values_astype(ak.Array([[r[k] for r in ev] for ev in HIT_RANGES]), "uint32")
    n_contributions = [len(c) for c in CONTRIBUTION_PDG]
    contributions = {"PDG": ak.values_astype(ak.Array(CONTRIBUTION_PDG), "int32")}
    for name, scale in (("energy", 1e-3), ("time", 50.0), ("stepLength", 1.0)):
        contributions[name] = jagged(n_contributions, "float32", scale)
    contributions |= {f"stepPosition.{c}": jagged(n_contributions, "float32") for c in "xyz"}

    def relation(index: list[list[int]]) -> ak.Array:
        index = ak.values_astype(ak.Array(index), "int32")
        return ak.zip({"index": index, "collectionID": ak.values_astype(index * 0 + 7, "uint32")})

    columns = {
        "MCParticles": ak.zip(particles),
        "HcalBarrelHits": ak.zip(hits),
        to_contributions: relation(CONTRIBUTION_INDEX),
        "HcalBarrelHitsContributions": ak.zip(contributions),
        to_particles: relation(CONTRIBUTION_PARTICLE),
    }
    with uproot.recreate(path) as f:
        f.mktree(
            "events",
            {k: ak.type(v).content for k, v in columns.items()},
            field_name=lambda outer, inner: f"{outer}.{inner}",
        )
        f["events"].extend(columns)
    return path


def python_loop_contributions(tree: uproot.TTree, schema: str) -> dict[str, list]:
    """The oracle: every hit's contributions and their particles, event by event."""
    to_contributions, to_particles = CALO_SCHEMAS[schema]

    def leaf(name: str) -> list:
        return tree[name].array().tolist()

    c = "HcalBarrelHitsContributions"
    time, energy, x, pdg = (leaf(f"{c}.{f}") for f in ("time", "energy", "stepPosition.x", "PDG"))
    cell, particle_pdg = leaf("HcalBarrelHits.cellID"), leaf("MCParticles.PDG")
    index, link = leaf(f"{to_contributions}.index"), leaf(f"{to_particles}.index")
    out: dict[str, list] = {k: [] for k in ("time", "eDep", "position_x", "PDG", "cellID", "p")}
    begins, ends = (
        leaf("HcalBarrelHits.contributions_begin"),
        leaf("HcalBarrelHits.contributions_end"),
    )
    for e in range(len(index)):
        rows = {k: [] for k in out}
        for h, (b, stop) in enumerate(zip(begins[e], ends[e], strict=True)):
            for r in range(b, stop):
                k = index[e][r]
                if not 0 <= k < len(time[e]) or not 0 <= link[e][k] < len(particle_pdg[e]):
                    continue
                values = (time[e][k], energy[e][k], x[e][k], pdg[e][k], cell[e][h],
                          particle_pdg[e][link[e][k]])  # fmt: skip
                for key, value in zip(rows, values, strict=True):
                    rows[key].append(value)
        for key in out:
            out[key].append(rows[key])
    return out


@pytest.mark.parametrize("schema", CALO_SCHEMAS)
def test_calorimeter_hits_yield_their_contributions_linked_to_particles(tmp_path, schema):
    path = write_calorimeter(tmp_path / "calo.root", schema)
    with uproot.open(path) as f:
        tree = f["events"]
        keys = tree.keys()
        found = detect_schema(keys, "HcalBarrelHits")
        assert (found.contribution_index, found.relation) == tuple(
            f"{name}.index" for name in CALO_SCHEMAS[schema]
        )
        assert found.calorimeter and hit_collections(keys) == ["HcalBarrelHits"]
        fields = ("time", "eDep", "position.x", "PDG", "cellID")
        hits, n_unlinked = read_hits(tree, "HcalBarrelHits", 0, 4, fields, ("PDG",))
        expected = python_loop_contributions(tree, schema)
        # Unlinked: event 0's contribution 3 (particle 9), event 2's 1 (particle -1), event 3's
        # relation entry 7.
        assert n_unlinked == 3 and ak.num(hits).tolist() == [3, 0, 1, 3]
        for field in ("time", "eDep", "position_x", "PDG", "cellID"):
            assert hits[field].tolist() == expected[field], field
        assert hits["particle_PDG"].tolist() == expected["p"]
        # In hit order: event 0's hit 0 holds contributions 3 (unlinked) and 1, hit 1 holds 0, 2.
        assert hits["PDG"].tolist()[0] == [-22, 13, -22]
        # An entry range reads only its events.
        part, unlinked = read_hits(tree, "HcalBarrelHits", 2, 4, ("PDG",), ("PDG",))
        assert part["PDG"].tolist() == [[13], [-13, -22, -22]] and unlinked == 2


def test_calorimeter_layout_errors_name_what_is_missing(tmp_path):
    hits = ["C.position.x", "C.contributions_begin", "C.contributions_end", "C.energy"]
    mc = ["MCParticles.PDG", "MCParticles.momentum.x", "MCParticles.vertex.x"]
    with pytest.raises(
        DetlearnError,
        match=r"^f.root: calorimeter collection 'C' has no relation to its "
        r"contributions \(_C_contributions.index\)$",
    ):
        detect_schema([*hits, *mc], "C", where="f.root")
    relation = ["_C_contributions.index"]

    def contribution(name: str) -> list[str]:
        return [f"{name}.{m}" for m in ("PDG", "energy", "time", "stepPosition.x")]

    with pytest.raises(
        DetlearnError,
        match=r"no contribution collection 'CContributions' for calorimeter collection 'C' "
        r"\(contribution collections in this file: A, B\)",
    ):
        detect_schema([*hits, *mc, *relation, *contribution("A"), *contribution("B")], "C")
    contributions = contribution("CContributions")
    with pytest.raises(DetlearnError, match=r"'CContributions' has no particle relation"):
        detect_schema([*hits, *mc, *relation, *contributions], "C")
    path = write_calorimeter(tmp_path / "calo.root", "podio>=0.17")
    with (
        uproot.open(path) as f,
        pytest.raises(
            DetlearnError,
            match=r"no leaf 'HcalBarrelHitsContributions.pathLength' in collection "
            r"'HcalBarrelHitsContributions' \(its fields: PDG, energy, stepLength",
        ),
    ):
        read_hits(f["events"], "HcalBarrelHits", 0, 4, ("pathLength",))


def test_real_file_links_simcalorimeterhit_contributions_to_mcparticlecollection(example_tree):
    # EDM4hep's own writer: contributions in CaloHitContributionCollection (not ddsim's
    # <hits>Contributions), the hit's relation _SimCalorimeterHitCollection_contributions.
    schema = detect_schema(example_tree.keys(), "SimCalorimeterHitCollection")
    assert (schema.contributions, schema.contribution_index, schema.relation) == (
        "CaloHitContributionCollection",
        "_SimCalorimeterHitCollection_contributions.index",
        "_CaloHitContributionCollection_particle.index",
    )
    fields = ("time", "eDep", "PDG", "cellID")
    hits, n_unlinked = read_hits(
        example_tree, "SimCalorimeterHitCollection", 0, 3, fields, ("PDG",)
    )
    assert n_unlinked == 0 and ak.num(hits).tolist() == [1, 1, 1]
    c = "CaloHitContributionCollection"
    assert hits["PDG"].tolist() == example_tree[f"{c}.PDG"].array().tolist()
    assert hits["eDep"].tolist() == example_tree[f"{c}.energy"].array().tolist()
    particle = python_loop_link(example_tree, "MCParticleCollection", f"_{c}_particle.index", "PDG")
    assert hits["particle_PDG"].tolist() == particle
    cells = example_tree["SimCalorimeterHitCollection.cellID"].array().tolist()
    assert hits["cellID"].tolist() == cells
