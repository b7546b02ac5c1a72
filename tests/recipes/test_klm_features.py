"""klm-timing extractor: photon rows from EDM4hep files, in both schema generations."""

from __future__ import annotations

import re
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from detlearn.cli import app
from detlearn.errors import DetlearnError
from detlearn.io.dataset import Dataset
from detlearn.prepare import prepare
from detlearn.recipes import load_config
from detlearn.recipes.klm_timing.features import primary_context
from detlearn.recipes.klm_timing.simulate import KLMSimConfig, simulate_events, write_edm4hep


def _config(tmp_path, inputs, **data):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {"recipe": "klm-timing", "data": {"inputs": inputs, **data}, "executor": {"workers": 1}}
        )
    )
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["particle-eDep", "MCParticle-EDep"])
def test_rows_equal_the_simulated_photons(tmp_path, legacy):
    cfg = KLMSimConfig(legacy_names=legacy, gun_z_max=740.0)
    events = simulate_events(60, cfg, np.random.default_rng(4))
    write_edm4hep(events, tmp_path / "klm.root", cfg)
    prepare(
        load_config(_config(tmp_path, [str(tmp_path / "klm.root")])),
        tmp_path / "ds",
        progress=False,
    )
    rows = Dataset.open(tmp_path / "ds").load(
        ["event", "z", "theta", "p", "dt", "photon", "n_photons", "edep"]
    )
    photon = rows["photon"] == 1
    order = np.lexsort((rows["dt"][photon], rows["event"][photon]))
    want = np.lexsort((events.dt, events.photon_event))
    np.testing.assert_array_equal(rows["event"][photon][order], events.photon_event[want])
    np.testing.assert_allclose(rows["dt"][photon][order], events.dt[want], atol=2e-5)
    ev = rows["event"]
    np.testing.assert_allclose(rows["z"], events.z_hit[ev], atol=1e-6)
    np.testing.assert_allclose(rows["theta"], events.theta[ev], atol=1e-9)
    np.testing.assert_allclose(rows["p"], events.p[ev], rtol=1e-9)
    np.testing.assert_array_equal(rows["n_photons"], events.n_photons[ev])
    # The observer E_dep is the muon's own hit's energy deposit (the file's only non-photon hit).
    np.testing.assert_allclose(rows["edep"], events.e_dep[ev], rtol=1e-6)
    assert (rows["edep"] > 0).all()


def test_event_without_photons_keeps_one_placeholder_row(tmp_path):
    cfg = KLMSimConfig(photodetection_efficiency=1e-4)  # almost every event has N = 0
    events = simulate_events(50, cfg, np.random.default_rng(0))
    assert (events.n_photons == 0).sum() > 10
    write_edm4hep(events, tmp_path / "klm.root", cfg)
    prepare(
        load_config(_config(tmp_path, [str(tmp_path / "klm.root")])),
        tmp_path / "ds",
        progress=False,
    )
    rows = Dataset.open(tmp_path / "ds").load(["event", "photon", "n_photons"])
    empty = rows["photon"] == 0
    assert sorted(rows["event"][empty]) == sorted(np.flatnonzero(events.n_photons == 0))
    assert (rows["n_photons"][empty] == 0).all()
    assert len(rows["event"]) == events.n_photons.sum() + (events.n_photons == 0).sum()
    # Without the photon weight the flow would train on the placeholders as photons at dt = 0.
    for photon in (None, {"role": "observer"}):
        cfg = _config(tmp_path, [str(tmp_path / "klm.root")], columns={"photon": photon})
        with pytest.raises(DetlearnError, match=r"klm\.root.*placeholder row.*role: weight"):
            prepare(load_config(cfg), tmp_path / "ds2", progress=False)


def test_t_hit_uses_the_full_momentum():
    # A track at 45 degrees: the path to the plane 6 mm away is 6 * sqrt(2) mm.
    ctx = primary_context(
        np.array([[1769.3, 0.0, 0.0]]),
        np.array([[1.0, 0.0, 1.0]]),
        np.array([0.1056584]),
        np.zeros(1),
        1775.3,
    )
    beta = np.sqrt(2) / np.hypot(np.sqrt(2), 0.1056584)
    assert ctx["t_hit"][0] == pytest.approx(6 * np.sqrt(2) / (beta * 299.792458), rel=1e-12)
    assert ctx["z"][0] == pytest.approx(6.0) and ctx["theta"][0] == pytest.approx(np.pi / 4)


def test_unknown_collection_lists_those_present(tmp_path, runner):
    cfg = KLMSimConfig()
    write_edm4hep(simulate_events(5, cfg, np.random.default_rng(0)), tmp_path / "klm.root", cfg)
    config = _config(tmp_path, [str(tmp_path / "klm.root")], options={"collection": "EcalHits"})
    result = runner.invoke(app, ["prepare", str(config), "--out", str(tmp_path / "ds"), "--quiet"])
    assert result.exit_code == 2
    assert "no hit collection 'EcalHits'" in result.output and "HcalBarrelHits" in result.output


def test_nonfinite_context_is_an_error_naming_column_and_count(tmp_path, runner):
    cfg = KLMSimConfig()
    events = simulate_events(20, cfg, np.random.default_rng(0))
    # Primaries flying parallel to the bar never reach the reference plane: z is infinite.
    events.px[:2] = 0.0
    write_edm4hep(events, tmp_path / "bad.root", cfg)
    config = _config(tmp_path, [str(tmp_path / "bad.root")])
    result = runner.invoke(app, ["prepare", str(config), "--out", str(tmp_path / "ds"), "--quiet"])
    assert result.exit_code == 2, result.output
    rows = int(events.n_photons[:2].clip(min=1).sum())
    text = " ".join(result.output.split())
    assert (
        f"bad.root: column 'z' from recipe klm-timing's defaults has {rows} non-finite values"
        in text
    )
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_a_collection_without_optical_photons_is_an_error_naming_what_it_holds(tmp_path, runner):
    # Optical physics off: every event keeps its muon's own hit and no photon.
    cfg = KLMSimConfig(photodetection_efficiency=1e-9)
    events = simulate_events(30, cfg, np.random.default_rng(0))
    assert events.n_photons.sum() == 0
    write_edm4hep(events, tmp_path / "klm.root", cfg)
    config = _config(tmp_path, [str(tmp_path / "klm.root")])
    result = runner.invoke(app, ["prepare", str(config), "--out", str(tmp_path / "ds"), "--quiet"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert re.search(
        r"klm\.root:events\[0:30\]: collection 'HcalBarrelHits' holds no optical-photon hit "
        r"\(linked MCParticle PDG -22\) in 30 events; found PDG -?13: 30 hits \(optical physics",
        text,
    ), text
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_a_recipe_column_removed_with_null_is_left_out_though_the_extractor_gives_it(tmp_path):
    cfg = KLMSimConfig()
    write_edm4hep(simulate_events(20, cfg, np.random.default_rng(0)), tmp_path / "klm.root", cfg)
    config = _config(tmp_path, [str(tmp_path / "klm.root")], columns={"edep": None})
    prepare(load_config(config), tmp_path / "ds", progress=False)
    columns = Dataset.open(tmp_path / "ds").columns
    assert "edep" not in columns and {"dt", "photon", "event"} <= set(columns)


# ddsim's calorimeter layout, both podio spellings: the hits' relation to their contributions,
# and the contributions' relation to MCParticles.
CALORIMETER = {
    "podio>=0.17": ("_HcalBarrelHits_contributions", "_HcalBarrelHitsContributions_particle"),
    "podio<0.17": ("HcalBarrelHits#0", "HcalBarrelHitsContributions#0"),
}


def _as_calorimeter(src: Path, dst: Path, schema: str) -> Path:
    """The events of a tracker-layout file (``write_edm4hep``) as ddsim writes a calorimeter:
    each deposit a CaloHitContribution with its own PDG, energy, time and step position, in
    SimCalorimeterHits ``HcalBarrelHits`` (per event one holding the photons, listed from the
    relation in reverse, then one holding the muon's deposit), linked to the only MCParticle
    ddsim kept, the primary (optical photons are not kept)."""
    to_contributions, to_particles = CALORIMETER[schema]
    with uproot.open(src) as f:
        tree = f["events"]
        particles = {
            k.removeprefix("MCParticles."): tree[k].array()[:, :1]
            for k in tree.keys()
            if k.startswith("MCParticles.")
        }
        pdg = tree["MCParticles.PDG"].array()[tree["_HcalBarrelHits_particle.index"].array()]
        hit = {name: tree[f"HcalBarrelHits.{name}"].array() for name in
               ("eDep", "time", "position.x", "position.y", "position.z", "cellID")}  # fmt: skip
    n = ak.to_numpy(ak.num(pdg))
    # Contribution 0 is the muon's deposit, 1.. its photons.
    index = [[*range(k - 1, 0, -1), 0] for k in n]
    begin = [[0, k - 1] if k > 1 else [0] for k in n]
    end = [[k - 1, k] if k > 1 else [1] for k in n]

    def jagged(rows: list, dtype: str) -> ak.Array:
        return ak.values_astype(ak.Array(rows), dtype)

    def relation(rows: list) -> ak.Array:
        index = jagged(rows, "int32")
        return ak.zip({"index": index, "collectionID": ak.values_astype(index * 0 + 3, "uint32")})

    cell = [[c[0]] * len(b) for c, b in zip(hit["cellID"].tolist(), begin, strict=True)]
    columns = {
        "MCParticles": ak.zip(particles),
        "HcalBarrelHits": ak.zip(
            {
                "cellID": jagged(cell, "uint64"),
                "energy": jagged([[0.0] * len(b) for b in begin], "float32"),
                **{
                    f"position.{c}": jagged([[0.0] * len(b) for b in begin], "float32")
                    for c in "xyz"
                },
                "contributions_begin": jagged(begin, "uint32"),
                "contributions_end": jagged(end, "uint32"),
            }
        ),
        to_contributions: relation(index),
        "HcalBarrelHitsContributions": ak.zip(
            {
                "PDG": ak.values_astype(pdg, "int32"),
                "energy": hit["eDep"],
                "time": hit["time"],
                "stepLength": ak.values_astype(hit["time"] * 0, "float32"),
                **{
                    f"stepPosition.{c}": ak.values_astype(hit[f"position.{c}"], "float32")
                    for c in "xyz"
                },
            }
        ),
        to_particles: relation([[0] * k for k in n]),
    }
    with uproot.recreate(dst) as f:
        f.mktree("events", {k: ak.type(v).content for k, v in columns.items()},
                 field_name=lambda outer, inner: f"{outer}.{inner}")  # fmt: skip
        f["events"].extend(columns)
    return dst


@pytest.mark.parametrize("schema", CALORIMETER)
def test_calorimeter_layout_gives_the_rows_of_the_tracker_layout(tmp_path, schema):
    cfg = KLMSimConfig(gun_z_max=740.0)
    events = simulate_events(40, cfg, np.random.default_rng(5))
    write_edm4hep(events, tmp_path / "tracker.root", cfg)
    _as_calorimeter(tmp_path / "tracker.root", tmp_path / "calo.root", schema)
    names = ["event", "z", "theta", "p", "dt", "photon", "n_photons", "edep"]
    rows = {}
    for layout in ("tracker", "calo"):
        config = _config(tmp_path, [str(tmp_path / f"{layout}.root")])
        prepare(load_config(config), tmp_path / layout, progress=False)
        data = Dataset.open(tmp_path / layout).load(names)
        order = np.lexsort((data["dt"], data["event"]))
        rows[layout] = {k: v[order] for k, v in data.items()}
    assert rows["calo"]["photon"].sum() == events.n_photons.sum() > 0
    for name in names:
        np.testing.assert_allclose(rows["calo"][name], rows["tracker"][name], rtol=1e-6)


def test_calorimeter_layout_without_optical_photons_names_the_contributions_pdg(tmp_path, runner):
    cfg = KLMSimConfig(photodetection_efficiency=1e-9)
    write_edm4hep(simulate_events(30, cfg, np.random.default_rng(0)), tmp_path / "t.root", cfg)
    _as_calorimeter(tmp_path / "t.root", tmp_path / "calo.root", "podio>=0.17")
    config = _config(tmp_path, [str(tmp_path / "calo.root")])
    result = runner.invoke(app, ["prepare", str(config), "--out", str(tmp_path / "ds"), "--quiet"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert re.search(
        r"collection 'HcalBarrelHits' holds no optical-photon hit \(contribution PDG -22\) in "
        r"30 events; found PDG -?13: 30 hits",
        text,
    ), text
