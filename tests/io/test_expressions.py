"""Expressions over branches: numbers against numpy, FEDHEX/EDM4hep forms as written, and one
clear line for every bad expression or wrong-shaped result."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import write_tree

from detlearn.errors import DetlearnError
from detlearn.io.expressions import ColumnSet, Expression

RNG = np.random.default_rng(7)
N = 50
PX, PY, PZ = RNG.normal(0, 1, (3, N))
COUNTS = RNG.integers(0, 4, N)
HIT_E = ak.unflatten(RNG.exponential(1.0, COUNTS.sum()), COUNTS)
ARRAYS = {"px": PX, "py": PY, "pz": PZ, "hitE": HIT_E}


def test_arithmetic_on_jagged_and_flat():
    out = Expression("hitE * px + 1").evaluate(ARRAYS)
    expected = [[e * px + 1 for e in event] for event, px in zip(HIT_E.tolist(), PX, strict=True)]
    assert str(ak.type(out).content) == "var * float64"
    assert ak.all(abs(ak.flatten(out) - ak.flatten(ak.Array(expected))) < 1e-12)


def test_theta_matches_numpy():
    theta = Expression("arccos(pz / sqrt(px**2 + py**2 + pz**2))").evaluate(ARRAYS)
    np.testing.assert_allclose(ak.to_numpy(theta), np.arccos(PZ / np.sqrt(PX**2 + PY**2 + PZ**2)))


def test_numpy_and_awkward_namespaces():
    out = Expression("np.hypot(px, py) + ak.sum(hitE, axis=1) * np.pi").evaluate(ARRAYS)
    expected = np.hypot(PX, PY) + np.array([sum(e) for e in HIT_E.tolist()]) * np.pi
    np.testing.assert_allclose(ak.to_numpy(out), expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(px > 0) & (py < 0)", (PX > 0) & (PY < 0)),
        ("(px > 0) | ~(pz > 1)", (PX > 0) | ~(PZ > 1)),
        ("px > 0 and py < 0 or not pz > 1", ((PX > 0) & (PY < 0)) | ~(PZ > 1)),
        ("-1 < px < 1", (PX > -1) & (PX < 1)),
        ("ak.num(hitE) >= 2", COUNTS >= 2),
        # ROOT's (C++) spelling: && || and a logical not that binds tightly; != stays.
        ("px > 0 && py < 0 || !(pz > 1)", ((PX > 0) & (PY < 0)) | ~(PZ > 1)),
        ("px>0&&py!=0", (PX > 0) & (PY != 0)),
        ("!(px > 0)&&!(ak.num(hitE) == 0)", (PX <= 0) & (COUNTS != 0)),
        ("!ak.num(hitE)", COUNTS == 0),
        ("!ak.num(hitE) == 0", COUNTS != 0),  # C: (!n) == 0; Python's not would negate it all
    ],
)
def test_selections(text, expected):
    columns = ColumnSet({"px": None}, text)
    values, n_before, n_after = columns.evaluate(ARRAYS)
    assert (n_before, n_after) == (N, expected.sum())
    np.testing.assert_array_equal(values["px"], PX[expected])


def test_a_requirement_that_fails_names_itself_the_entries_and_the_first():
    arrays = {"raw": ak.Array([[1.0] * 8, [1.0] * 8, [1.0] * 10, [1.0] * 6]), "e": np.ones(4)}
    columns = ColumnSet({"e": None}, "e > 0", require=["ak.num(raw) == 8"])
    with pytest.raises(DetlearnError) as err:
        columns.evaluate(arrays, where="f.root:Events[0:4]")
    assert str(err.value) == (
        "data.require 'ak.num(raw) == 8' fails for 2 of 4 entries in f.root:Events[0:4] "
        "(the first: entry 2 of the chunk)"
    )
    fine = {k: v[:2] for k, v in arrays.items()}
    assert columns.evaluate(fine)[0]["e"].tolist() == [1.0, 1.0]
    assert columns.branches(["raw", "e"]) == {"raw", "e"}


def test_per_entry_index_picks_that_element_fedhex():
    arrays = {
        "TwoProng_massPi0": ak.Array([[0.5, 1.5, 2.5], [3.5], [4.5, 5.5], []]),
        "CBL_RecoPhi_twoprongindex": np.array([2, 0, 1, 0], dtype=np.int32),
    }
    columns = ColumnSet(
        {"omega": "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]"}, "ak.num(TwoProng_massPi0) > 0"
    )
    values, _, n_after = columns.evaluate(arrays)
    assert n_after == 3 and values["omega"].tolist() == [2.5, 3.5, 5.5]


def test_invalid_per_entry_index_fails_the_cut_instead_of_raising():
    arrays = {
        "Photon_pt": ak.Array([[300.0, 10.0], [250.0], [400.0]]),
        "CBL_RecoPhi_photonindex": np.array([0, -1, 5]),
        "CBL_Region": np.array([1, 1, 1]),
    }
    cut = "CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 220"
    values, _, n_after = ColumnSet({"pt": "Photon_pt[CBL_RecoPhi_photonindex]"}, cut).evaluate(
        arrays
    )
    assert n_after == 1 and values["pt"].tolist() == [300.0]


def test_per_entry_index_after_a_cut_that_keeps_no_entry():
    # A file of one grid point that the selection rejects whole (a cut on the generated mass).
    arrays = {
        "TwoProng_massPi0": ak.Array([[0.5, 1.5], [3.5]]),
        "CBL_RecoPhi_twoprongindex": np.array([1, -1], dtype=np.int32),
        "GenOmega_mass": ak.Array([[0.25], [0.25]]),
    }
    columns = ColumnSet(
        {"omega": "TwoProng_massPi0[CBL_RecoPhi_twoprongindex]"}, "GenOmega_mass[:, 0] > 0.5"
    )
    values, n_before, n_after = columns.evaluate(arrays)
    assert (n_before, n_after) == (2, 0) and values["omega"].shape == (0,)


def test_first_element_of_every_entry_after_a_cut():
    arrays = {"GenPhi_mass": ak.Array([[2464.0, 1.0], [], [1000.0]])}
    columns = ColumnSet({"labelphi": "GenPhi_mass[:, 0]"}, "ak.num(GenPhi_mass) > 0")
    assert columns.evaluate(arrays)[0]["labelphi"].tolist() == [2464.0, 1000.0]


def test_dotted_edm4hep_branch_names(tmp_path):
    branches = {f"MCParticles.momentum.{c}": ak.Array([[1.0, 2.0], [3.0]]) for c in "xyz"}
    write_tree(tmp_path / "e.root", "events", branches)
    text = "ak.firsts(sqrt(MCParticles.momentum.x**2 + MCParticles.momentum.y**2))"
    expr = Expression(text, column="pt")
    with uproot.open(tmp_path / "e.root") as f:
        keys = f["events"].keys()
        assert expr.branches(keys) == {"MCParticles.momentum.x", "MCParticles.momentum.y"}
        arrays = f["events"].arrays(sorted(expr.branches(keys)))
    out = expr.evaluate({name: arrays[name] for name in arrays.fields})
    np.testing.assert_allclose(ak.to_numpy(out), np.sqrt(2) * np.array([1.0, 3.0]))


def test_parse_error_shows_expression_and_position():
    with pytest.raises(DetlearnError) as err:
        Expression("px +* 2", column="foo")
    assert str(err.value) == (
        "cannot parse expression 'px +* 2' (column 'foo'): invalid syntax at char 4 ('* 2')"
    )


def test_unknown_name_lists_closest_branches():
    with pytest.raises(DetlearnError) as err:
        Expression("sqrt(pxx) + 1", column="e").branches(["px", "py", "pz", "hitE", "region"])
    message = str(err.value)
    assert message.startswith("unknown name 'pxx' in expression 'sqrt(pxx) + 1' (column 'e')")
    assert message.endswith("closest branches: px, pz, py")


def test_unknown_dotted_name_lists_closest_leaves():
    with pytest.raises(DetlearnError, match=r"closest branches: MCParticles\.momentum\.x$"):
        Expression("MCParticles.momentum.q").branches(
            ["MCParticles.momentum.x", "EventHeader.weight"]
        )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("__import__('os')", "the name '__import__' is not allowed"),
        ("px.__class__", "attribute access '.__class__' is not allowed"),
        ("np.__dict__", "attribute access '.__dict__' is not allowed"),
        ("(px + 1).real", "attribute access '.real' is not allowed"),
        ("lambda: px", "lambda is not allowed"),
        ("[p for p in px]", "a comprehension is not allowed"),
        ("px if py else pz", "'a if c else b' (use where(c, a, b)) is not allowed"),
        ("'rm -rf'", "the constant 'rm -rf' is not allowed"),
        ("np.load(px)", "unknown function 'np.load'"),
        ("open(px)", "unknown function 'open'"),
        ("sum(hitE)", "unknown function 'sum'; call it as ak.sum(...)"),
        ("sqrt(**px)", "'**' keyword unpacking is not allowed"),
        ("px, py", "a tuple is not allowed"),
        ("hitE[(0, 1),]", "a tuple is not allowed"),
    ],
)
def test_forbidden_constructs_are_rejected(text, reason):
    with pytest.raises(DetlearnError) as err:
        Expression(text)
    assert str(err.value).startswith(f"expression '{text}': {reason}")


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("region == 1 & px > 0", "1 & px"),  # a ROOT-style cut: region == (1 & px) > 0
        ("px > 0 | py < 0", "0 | py"),
        ("(region) & 1 == 1", "region & 1"),
    ],
)
def test_an_unbracketed_cut_that_python_would_read_otherwise_is_rejected(text, first):
    with pytest.raises(DetlearnError) as err:
        ColumnSet({"px": None}, text)
    assert str(err.value).startswith(
        f"expression '{text}' (selection): '{first}' is computed before the comparison next to it"
    )
    assert "put each comparison in brackets" in str(err.value)
    # Bracketed, each reads as meant.
    for fine in (
        "(region == 1) & (px > 0)",
        "(region & 1) == 1",
        "where((px > 0) | (py < 0), 1, 0)",
    ):
        Expression(fine)


def test_module_attribute_that_is_not_whitelisted_is_unknown():
    with pytest.raises(DetlearnError, match=r"unknown name 'np\.random'"):
        Expression("np.random + px").evaluate(ARRAYS)


def test_runtime_broadcast_error_names_expression_and_file():
    with pytest.raises(DetlearnError) as err:
        Expression("hitE + hitE[:, :1]", column="x").evaluate(ARRAYS, where="f.root")
    message = str(err.value)
    assert message.startswith(
        "cannot evaluate expression 'hitE + hitE[:, :1]' (column 'x') in f.root: "
    )
    assert "ValueError" in message and "compiled code" not in message


def test_jagged_column_where_flat_expected():
    with pytest.raises(DetlearnError) as err:
        ColumnSet({"x": "hitE * 2"}).evaluate(ARRAYS, where="f.root")
    assert str(err.value) == (
        "column 'x' (expr 'hitE * 2') is jagged (var * float64) in f.root; reduce it "
        "(e.g. ak.firsts) or index it"
    )


def test_missing_values_in_a_column_are_an_error():
    with pytest.raises(
        DetlearnError, match=r"column 'e0' \(expr 'ak.firsts\(hitE\)'\) has \d+ missing"
    ):
        ColumnSet({"e0": "ak.firsts(hitE)"}).evaluate(ARRAYS, where="f.root")
    values, _, _ = ColumnSet({"e0": "ak.fill_none(ak.firsts(hitE), -1)"}).evaluate(ARRAYS)
    assert values["e0"].tolist() == [e[0] if e else -1 for e in HIT_E.tolist()]


def test_full_reduction_is_not_broadcast():
    with pytest.raises(
        DetlearnError, match=r"reduces all entries to one value in f.root; give axis=1"
    ):
        ColumnSet({"s": "ak.sum(hitE)"}).evaluate(ARRAYS, where="f.root")


def test_first_entry_instead_of_first_element_gets_a_hint():
    hits = ak.Array([[1.0, 2.0], *[[3.0]] * (N - 1)])
    with pytest.raises(DetlearnError, match=r"has 2 entries, expected 50; note that x\[0\] is"):
        ColumnSet({"x": "hitE[0]"}).evaluate({**ARRAYS, "hitE": hits})


def test_constant_column_is_repeated_per_entry():
    values, _, _ = ColumnSet({"label": "1", "px": None}, "px > 0").evaluate(ARRAYS)
    assert values["label"].tolist() == [1] * int((PX > 0).sum())


def test_columns_use_columns_in_any_order():
    columns = ColumnSet({"theta": "arccos(pz / p)", "p": "sqrt(px**2 + py**2 + pz**2)"}, "p > 1")
    assert columns.branches([*ARRAYS, "region"]) == {"px", "py", "pz"}
    values, _, n_after = columns.evaluate(ARRAYS)
    p = np.sqrt(PX**2 + PY**2 + PZ**2)
    assert n_after == (p > 1).sum()
    np.testing.assert_allclose(values["theta"], np.arccos(PZ / p)[p > 1])
    assert list(values) == ["theta", "p"]


def test_own_name_means_the_branch():
    values, _, _ = ColumnSet({"px": "px * 1000", "py": None}).evaluate(ARRAYS)
    np.testing.assert_allclose(values["px"], PX * 1000)
    np.testing.assert_array_equal(values["py"], PY)


def test_cyclic_columns():
    with pytest.raises(
        DetlearnError, match="columns refer to each other in a cycle: a -> b -> c -> a"
    ):
        ColumnSet({"a": "b + px", "b": "c * 2", "c": "a - 1"}).branches(list(ARRAYS))


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ("hitE > 1", r"selection 'hitE > 1' is jagged \(var \* bool\) in f.root; reduce it"),
        ("px * 2", r"selection 'px \* 2' gives float64, not true/false per entry in f.root"),
    ],
)
def test_selection_must_be_one_boolean_per_entry(selection, message):
    with pytest.raises(DetlearnError, match=message):
        ColumnSet({"px": None}, selection).evaluate(ARRAYS, where="f.root")


def test_expression_is_reusable_across_chunks():
    expr = Expression("ak.num(hitE) + px")
    first = ak.to_numpy(expr.evaluate(ARRAYS))
    second = ak.to_numpy(expr.evaluate({"hitE": HIT_E[:10], "px": PX[:10]}))
    np.testing.assert_array_equal(first[:10], second)


def test_resolved_names_follow_the_names_present():
    # Resolution is kept per set of names: a name that becomes a column, or goes missing,
    # must be resolved again, not taken from an earlier chunk.
    cols = ColumnSet({"p": "px * 2", "q": "p + 1"})
    with_branch_p = {**ARRAYS, "p": np.zeros(N)}
    for arrays in (ARRAYS, with_branch_p, ARRAYS):
        values, _, _ = cols.evaluate(arrays)
        np.testing.assert_allclose(values["q"], PX * 2 + 1)
    expr = Expression("px + py")
    np.testing.assert_allclose(ak.to_numpy(expr.evaluate(ARRAYS)), PX + PY)
    with pytest.raises(DetlearnError, match="unknown name 'py'"):
        expr.evaluate({"px": PX})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sqrt(x, where=x > 0)", "keyword argument 'where=' is not allowed"),
        ("minimum(x, 0, out=x)", "keyword argument 'out=' is not allowed"),
        ("x + 10**10**10", r"the exponent '10 \*\* 10' is not allowed"),
        ("x ** (2 ** 5000)", "is not allowed"),
        ("x + 123456789012345678901234567890", "too large"),
        ("x" + " + x" * 5000, "characters long"),
        ("(" * 300 + "x" + ")" * 300, "nested"),
        ("-" * 150 + "x", "nested too deeply"),
    ],
)
def test_the_sandbox_refuses_escapes_and_resource_bombs(text, message):
    with pytest.raises(DetlearnError, match=message):
        Expression(text)


def test_allowed_keywords_and_small_powers_still_work():
    x = np.array([1.0, 4.0, 9.0])
    assert Expression("x ** 2 + 2 ** 10").evaluate({"x": x}).tolist() == [1025.0, 1040.0, 1105.0]
    jagged = ak.Array([[1.0, 2.0], [3.0]])
    assert Expression("ak.sum(h, axis=1)").evaluate({"h": jagged}).tolist() == [3.0, 3.0]


def test_root_logic_keeps_the_sandbox_limits():
    with pytest.raises(DetlearnError, match="nested too deeply"):
        Expression("!" * 150 + "x")
    with pytest.raises(DetlearnError, match=r"cannot parse expression 'x &&& y'"):
        Expression("x &&& y")
    with pytest.raises(DetlearnError, match=r"'0 \| py' is computed before the comparison"):
        Expression("px > 0 | py < 0 && pz > 0")


# EDM4hep's CovMatrix3f: a fixed-size array per hit, read as n * var * 6 * float32.
COV = ak.to_regular(
    ak.Array([[[0.0, 1, 2, 3, 4, 5], [6.0, 7, 8, 9, 10, 11]], [], [[12.0, 13, 14, 15, 16, 17]]]),
    axis=2,
)


@pytest.mark.parametrize("leaf", ["Hits.covMatrix.values[6]", "Hits.covMatrix.values"])
def test_fixed_size_array_leaves_give_one_element_of_every_array(leaf):
    arrays = {leaf: COV, "Hits.eDep": ak.Array([[1.0, 2.0], [], [3.0]])}
    for text in ("Hits.covMatrix.values[0]", "Hits.covMatrix[0]"):
        assert Expression(text).evaluate(arrays).tolist() == [[0.0, 6.0], [], [12.0]]
    assert Expression("Hits.covMatrix[-1]").evaluate(arrays).tolist() == [[5.0, 11.0], [], [17.0]]
    columns = ColumnSet({"c5": "ak.sum(Hits.covMatrix.values[5] * Hits.eDep, axis=1)"})
    assert columns.branches(list(arrays)) == {leaf, "Hits.eDep"}
    assert columns.evaluate(arrays)[0]["c5"].tolist() == [5.0 + 22.0, 0.0, 51.0]
    # A list per entry keeps its meaning: x[0] is the first entry (and a clear error as a column).
    assert Expression("Hits.eDep[0]").evaluate(arrays).tolist() == [1.0, 2.0]
    with pytest.raises(DetlearnError, match="IndexError"):
        Expression("Hits.covMatrix[6]").evaluate(arrays)


def _write_hits_with_covariances(path, n_events: int, seed: int = 0):
    """An EDM4hep-like hit collection: ``Hits.eDep`` and ``Hits.covMatrix.values`` (six floats
    per hit), sharing the counter ``Hits``."""
    from uproot.writing._cascadetree import Tree

    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, n_events)
    cov = ak.to_regular(
        ak.unflatten(rng.normal(0, 1, (counts.sum(), 6)).astype(np.float32), counts), axis=2
    )
    e_dep = ak.unflatten(rng.exponential(1.0, counts.sum()).astype(np.float32), counts)
    columns = {"Hits.eDep": e_dep, "Hits.covMatrix.values": cov}
    write_jagged = Tree.write_jagged_basket

    def sized(self, sink, branch_name, compression, array, offsets):
        # uproot 5 hands this a flattened array of a `var * 6` branch and so writes its entry
        # offsets in floats, not in arrays of six (unreadable); give it the arrays' shape.
        shape = self._branch_data[self._branch_lookup[branch_name]]["shape"]
        return write_jagged(
            self, sink, branch_name, compression, array.reshape(-1, *shape), offsets
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Tree, "write_jagged_basket", sized)
        with uproot.recreate(path) as f:
            types = {k: ak.type(v).content for k, v in columns.items()}
            f.mktree("events", types, counter_name=lambda name: name.split(".")[0])
            f["events"].extend(columns)
    return cov, e_dep


def test_fixed_size_array_leaves_and_root_cuts_through_prepare(tmp_path, runner):
    import yaml

    from detlearn.cli import app
    from detlearn.io.dataset import Dataset

    cov, e_dep = _write_hits_with_covariances(tmp_path / "hits.root", 200)
    with uproot.open(tmp_path / "hits.root") as f:
        assert str(f["events"]["Hits.covMatrix.values"].array().type) == "200 * var * 6 * float32"
    config = {
        "data": {
            "inputs": ["hits.root"],
            "columns": {
                "sigma_xx": {"expr": "ak.max(Hits.covMatrix.values[0], axis=1)", "role": "target"},
                "sigma_zz": {"expr": "ak.max(Hits.covMatrix[5], axis=1)", "role": "observer"},
                "e": {"expr": "ak.sum(Hits.eDep, axis=1)", "role": "context", "unit": "GeV"},
            },
            "selection": "ak.num(Hits.eDep) > 0 && !(ak.sum(Hits.eDep, axis=1) > 3)",
        },
        "executor": {"workers": 1},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    result = runner.invoke(
        app, ["prepare", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "ds"), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    rows = Dataset.open(tmp_path / "ds").load(["sigma_xx", "sigma_zz", "e"])
    total = ak.to_numpy(ak.sum(e_dep, axis=1))
    keep = (ak.to_numpy(ak.num(e_dep)) > 0) & ~(total > 3)
    order = np.argsort(rows["e"])
    expected = np.argsort(total[keep])
    np.testing.assert_allclose(rows["e"][order], total[keep][expected], rtol=1e-6)
    for column, k in (("sigma_xx", 0), ("sigma_zz", 5)):
        want = ak.to_numpy(ak.max(cov[..., k], axis=1))[keep][expected]
        np.testing.assert_array_equal(rows[column][order], want)
