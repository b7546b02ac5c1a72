from __future__ import annotations

import pytest
import yaml

from detlearn.cli import app
from detlearn.config import (
    RunConfig,
    dump_commented_yaml,
    merge_options,
    validate_config,
)
from detlearn.errors import DetlearnError
from detlearn.recipes import RECIPES, get_recipe, load_config


def test_misspelled_key_names_key_and_nearest_spelling():
    with pytest.raises(
        DetlearnError, match=r"unknown key 'training.bach_size'; did you mean 'batch_size'"
    ):
        validate_config({"training": {"bach_size": 10}})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"data": {"columns": {"x": {"rol": "context"}}}},
            "'data.columns.x.rol'; did you mean 'role'",
        ),
        (
            {"split": {"holdout": {"columns": ["a"], "pointz": 1}}},
            "'split.holdout.pointz'; did you mean 'points'",
        ),
        (
            {"split": {"min_label_rows": {"columns": ["a"], "rows": 1, "rtoll": 0.1}}},
            "'split.min_label_rows.rtoll'; did you mean 'rtol'",
        ),
        ({"executor": {"slurm": {"coers": 4}}}, "'executor.slurm.coers'; did you mean 'cores'"),
    ],
)
def test_unknown_key_below_a_dict_or_an_optional_section_names_its_nearest_spelling(raw, message):
    with pytest.raises(DetlearnError, match=f"unknown key {message}"):
        validate_config(raw)


def test_unknown_top_level_key_names_nearest_section():
    with pytest.raises(DetlearnError, match=r"unknown key 'trainig'; did you mean 'training'"):
        validate_config({"trainig": {}})


def test_wrong_value_type_names_the_key():
    with pytest.raises(DetlearnError, match=r"training.batch_size"):
        validate_config({"training": {"batch_size": "many"}})


def test_error_message_is_one_line():
    with pytest.raises(DetlearnError) as info:
        validate_config({"data": {"columns": {"x": {"rol": "context"}}}})
    assert "\n" not in str(info.value)
    assert "data.columns.x.rol" in str(info.value)


def test_relative_inputs_resolve_against_config_folder(tmp_path):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"inputs": ["sim/*.root", "/abs/x.root:events"]}}))
    cfg = load_config(path)
    assert cfg.data.inputs == [str(tmp_path / "cfg" / "sim/*.root"), "/abs/x.root:events"]


def test_a_string_input_resolves_against_the_config_and_set_against_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"inputs": "sim/a.root"}}))
    assert load_config(path).data.inputs == [str(tmp_path / "cfg" / "sim" / "a.root")]
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path, {"data": {"inputs": ["here.root"]}})  # typed on the command line
    assert cfg.data.inputs == [str(tmp_path / "here.root")]


def test_missing_config_file(tmp_path):
    with pytest.raises(DetlearnError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_a_key_given_twice_is_an_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("recipe: mass-grid\ntraining:\n  seed: 1\nsplit: {}\ntraining:\n  lr: 0.1\n")
    with pytest.raises(DetlearnError, match=r"run\.yaml: line 5: key 'training' twice$"):
        load_config(path)
    path.write_text("training:\n  seed: 1\n  seed: 2\n")
    with pytest.raises(DetlearnError, match=r"line 3: key 'seed' twice$"):
        load_config(path)
    path.write_text("training: [1\n")
    with pytest.raises(DetlearnError, match=r"run\.yaml: not valid YAML \(ParserError\)"):
        load_config(path)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipes_default_config_reads_without_a_repeated_key(recipe):
    assert get_recipe(recipe).default_config()["recipe"] == recipe


def test_commented_dump_round_trips_to_the_same_config():
    cfg = RunConfig()
    text = dump_commented_yaml(cfg)
    assert "# rows per optimizer step" in text
    assert RunConfig.model_validate(yaml.safe_load(text)) == cfg


@pytest.mark.parametrize("recipe", ["klm-timing", "mass-grid", "hcal-energy"])
def test_cli_config_show_prints_commented_defaults(runner, recipe):
    from detlearn.recipes import get_recipe

    result = runner.invoke(app, ["config", "show", recipe])
    assert result.exit_code == 0, result.output
    assert f"recipe: {recipe}" in result.output
    assert "batch_size:" in result.output and "#" in result.output
    # The simulator's options too, each with its default and a comment; the text reads back.
    options = get_recipe(recipe).simulate_options
    shown = yaml.safe_load(result.output)["simulate"]
    defaults = options.model_validate(get_recipe(recipe).default_config().get("simulate") or {})
    assert options.model_validate(shown) == defaults and set(shown) == set(options.model_fields)
    lines = result.output.splitlines()
    for name in options.model_fields:
        assert any(line.startswith(f"  {name}: ") and "  # " in line for line in lines), name


def test_cli_unknown_recipe_exit_2(runner):
    result = runner.invoke(app, ["config", "show", "klm-timnig"])
    assert result.exit_code == 2
    assert "unknown recipe 'klm-timnig'" in result.output


def test_merge_options_fills_defaults_and_names_a_misspelled_key():
    defaults = {"samples": 10, "tolerance": 0.01}
    assert merge_options(defaults, {"samples": 5}, "x") == {"samples": 5, "tolerance": 0.01}
    assert merge_options(defaults, None, "x") == defaults
    with pytest.raises(
        DetlearnError,
        match=r"^evaluation.options: unknown option 'smaples'; did you mean 'samples'\?$",
    ):
        merge_options(defaults, {"smaples": 5}, "evaluation.options")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
            "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
            "expands to more than",
        ),
        (
            "training:\n" + "  " * 0 + "x: " + "[" * 2000 + "]" * 2000 + "\n",
            "nested too deeply|not valid YAML|expands",
        ),
    ],
)
def test_hostile_yaml_is_a_one_line_error(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(DetlearnError, match=message):
        load_config(path)


def test_non_utf8_yaml_is_a_one_line_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"training: {lr: \xff}\n")
    with pytest.raises(DetlearnError, match="not UTF-8"):
        load_config(path)


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "data:\n  columns:\n    p: &col {role: context, unit: GeV}\n    q: {<<: *col, unit: MeV}\n"
    )
    columns = load_config(path).data.columns
    assert (columns["q"].role, columns["q"].unit) == ("context", "MeV")
    assert columns["p"].unit == "GeV"


def test_a_recipes_column_is_changed_key_by_key_or_removed_with_null(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "recipe: mass-grid\ndata:\n  columns:\n    phi: null\n"
        "    omega: {expr: omega_mass, lower: null}\n    extra: {role: observer}\n"
    )
    cfg = load_config(path)
    columns = cfg.data.columns
    assert list(columns) == ["omega", "label_phi", "label_omega", "extra"]
    # omega keeps the recipe's role and unit, takes the user's expression and clears its bound.
    assert (columns["omega"].expr, columns["omega"].role, columns["omega"].unit) == (
        "omega_mass",
        "target",
        "GeV",
    )
    assert columns["omega"].lower is None
    recipe = "recipe mass-grid's defaults"
    origins = {name: cfg.data.column_origin(name) for name in columns}
    assert origins == {"omega": str(path), "label_phi": recipe, "label_omega": recipe,
                       "extra": str(path)}  # fmt: skip
    # --set is a layer of its own (and removes too); a column's origin is its expression's.
    over = {"data": {"columns": {"label_phi": None, "omega": {"unit": "MeV"}}}}
    cfg = load_config(path, over)
    assert "label_phi" not in cfg.data.columns and cfg.data.column_origin("omega") == str(path)
    over["data"]["columns"]["omega"]["expr"] = "omega_mass * 1000"
    assert load_config(path, over).data.column_origin("omega") == "--set"
    # A null column that no layer below defines is a misspelling: one line naming it.
    path.write_text("recipe: mass-grid\ndata:\n  columns:\n    phii: null\n")
    with pytest.raises(
        DetlearnError,
        match=r"run\.yaml: data\.columns\.phii: null removes a column defined by the recipe's "
        r"defaults, but there is no column 'phii' \(columns: phi, omega, label_phi, label_omega\)$",
    ):
        load_config(path)


def test_a_bad_key_is_named_with_the_layer_that_set_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("recipe: mass-grid\ntraining: {lr: 0.1}\n")
    with pytest.raises(DetlearnError, match=r"^--set: key 'training.lr': Input should be"):
        load_config(path, {"training": {"lr": -1}})
    path.write_text("recipe: mass-grid\ntraining: {lr: -1}\n")
    with pytest.raises(DetlearnError, match=rf"^{path}: key 'training.lr'"):
        load_config(path)


def test_a_column_error_says_whether_the_recipe_or_the_user_defined_the_column(tmp_path):
    from conftest import write_flat

    from detlearn.prepare import prepare

    # mass-grid's columns read FEDHEX branches that this flat file does not have.
    flat = write_flat(tmp_path / "flat.root", n=50)
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "recipe": "mass-grid",
                "data": {"inputs": [str(flat)], "selection": "region == 1"},
                "executor": {"workers": 1},
            }
        )
    )
    with pytest.raises(DetlearnError) as err:
        prepare(load_config(path), tmp_path / "ds", progress=False)
    assert str(err.value).startswith(
        "unknown name 'CBL_RecoPhi_mass' in expression 'CBL_RecoPhi_mass' (column 'phi' from "
        "recipe mass-grid's defaults; replace it under data.columns in your config or remove it "
        "with 'phi: null') in "
    )
    columns = {"phi": {"expr": "px * 2", "role": "target"}, "omega": {"expr": "pxx"}}
    path.write_text(
        yaml.safe_dump(
            {
                "recipe": "mass-grid",
                "data": {"inputs": [str(flat)], "selection": "region == 1", "columns": columns},
                "executor": {"workers": 1},
            }
        )
    )
    with pytest.raises(DetlearnError, match=rf"\(column 'omega' from {path}\) in .*flat\.root"):
        prepare(load_config(path), tmp_path / "ds", progress=False)
