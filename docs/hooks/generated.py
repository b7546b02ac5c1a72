"""MkDocs hook: the parts of the documentation that code can write, written by that code.

A page asks for one with a marker on a line of its own:

- ``<!-- detlearn:config-reference -->``: every section and key of a run config, from the
  pydantic schema (:class:`detlearn.config.RunConfig`): type, default, meaning;
- ``<!-- detlearn:config-show NAME -->``: ``detlearn config show NAME``, run at build time;
- ``<!-- detlearn:recipe-configs -->``: that, and the recipe's ``evaluation.options``
  defaults, for every registered recipe (a new recipe appears by itself);
- ``<!-- detlearn:recipe-targets NAME -->``: the quality targets of a recipe's evaluation
  (``TARGETS`` beside its ``evaluate``), the pass/FAIL lines of ``detlearn evaluate``;
- ``<!-- detlearn:layers -->``: the layers of the package, top to bottom, as the import-linter
  contract in ``pyproject.toml`` enforces them, each with its module's first docstring line;
- ``<!-- detlearn:cli-reference -->``: every ``detlearn`` subcommand, its arguments and options,
  from the typer application;
- ``<!-- detlearn:test-catalogue -->``: every fault and hostile input the test suite tries, read
  from the tests' own source: their names, parameter lists, hypothesis strategies and the
  errors they expect (``CATALOGUE`` lists the files).

A marker this hook does not know fails the build, so a typo cannot leave a page half-empty.

The rendered pages get one more pass: the Sphinx roles of the package's docstrings
(``:func:`~.density.log_density```) lose their role prefix, leaving the literal.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import io
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter's own TOML reader
    import tomli as tomllib

MARKER = re.compile(r"^<!-- detlearn:([a-z-]+)(?: ([A-Za-z0-9_.-]+))? -->$", re.MULTILINE)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace every marker of a page by what it names."""
    return MARKER.sub(lambda m: _render(m.group(1), m.group(2)), markdown)


# ":func:<code>~.density.log_density</code>" -> "<code>density.log_density</code>"
ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|exc|obj|math):(<code>)~?\.?")


def on_page_content(html: str, **kwargs: Any) -> str:
    """Drop the Sphinx role prefixes that docstrings carry into the rendered page."""
    return ROLE.sub(r"\1", html)


def _render(kind: str, arg: str | None) -> str:
    if kind == "config-reference":
        from detlearn.config import RunConfig

        return _model_tables(RunConfig, "", 3)
    if kind == "config-show" and arg:
        return _fenced(_config_show(arg), "yaml")
    if kind == "recipe-configs":
        return _recipe_configs()
    if kind == "recipe-targets" and arg:
        return _recipe_targets(arg)
    if kind == "layers":
        return _layers()
    if kind == "cli-reference":
        return _cli_reference()
    if kind == "test-catalogue":
        return _catalogue()
    raise ValueError(f"docs/hooks/generated.py: unknown marker 'detlearn:{kind} {arg or ''}'")


def _fenced(text: str, lang: str = "") -> str:
    return f"```{lang}\n{text.rstrip()}\n```\n"


def _cell(text: str) -> str:
    """Text for a table cell, on one line, its pipes escaped."""
    return text.replace("|", "\\|").replace("\n", " ")


def _prose(text: str) -> str:
    """Prose for a table cell: braces escaped too, which attr_list would otherwise take for an
    attribute list (``name -> {expr, role}``) and drop."""
    return _cell(text).replace("{", "\\{").replace("}", "\\}")


# --- configuration ------------------------------------------------------------------------


def _submodel(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The pydantic model below a field's annotation, and whether it sits in a dict (a named
    entry per key, as ``data.columns.<name>``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is dict and len(args) == 2:
        inner, _ = _submodel(args[1])
        return inner, inner is not None
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            inner, in_dict = _submodel(arg)
            if inner is not None:
                return inner, in_dict
    return None, False


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(json.dumps(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    # dict[str, detlearn.config.ColumnSpec] -> dict[str, ColumnSpec]
    return re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", str(annotation))


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return "`" + json.dumps(value, ensure_ascii=False) + "`"


def _model_tables(model: type[BaseModel], prefix: str, level: int) -> str:
    """A table of ``model``'s keys, then one section per nested model (depth first)."""
    title = f"`{prefix}`" if prefix else "Top level"
    doc = " ".join(inspect.cleandoc(model.__doc__ or "").split("\n\n")[0].split())
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    nested = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        inner, in_dict = _submodel(field.annotation)
        if inner is not None:
            nested.append((inner, f"{key}.<name>" if in_dict else key))
        rows.append(
            f"| `{name}` | {_cell(_type_name(field.annotation))} | {_cell(_default(field))} "
            f"| {_prose(field.description or '')} |"
        )
    parts = [f"{'#' * level} {title}\n", f"{doc}\n" if doc else "", "\n".join(rows) + "\n"]
    # The top level's sections sit beside it; a section's own sections one level below.
    below = min(level + 1, 4) if prefix else level
    parts += [_model_tables(inner, key, below) for inner, key in nested]
    return "\n".join(p for p in parts if p)


def _config_show(name: str) -> str:
    from detlearn.cli import config_show

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        config_show(name)
    return buffer.getvalue()


def _recipe_configs() -> str:
    from detlearn.recipes import RECIPES

    parts = []
    for name, recipe in RECIPES.items():
        parts.append(f"### {name}\n\n{recipe.summary}\n")
        parts.append(f"`detlearn config show {name}`:\n\n" + _fenced(_config_show(name), "yaml"))
        options = _evaluation_attribute(recipe, "OPTIONS")
        if options is not None:
            dumped = yaml.safe_dump(
                {"evaluation": {"options": options}},
                sort_keys=False,
                allow_unicode=True,
                default_flow_style=None,
                width=100,
            )
            parts.append(
                f"Defaults of `evaluation.options` (`{recipe.evaluate.__module__}.OPTIONS`), "
                "which a config overrides key by key:\n\n" + _fenced(dumped, "yaml")
            )
    return "\n".join(parts)


def _evaluation_attribute(recipe: Any, name: str) -> Any:
    """``name`` in the module of a recipe's ``evaluate`` (each suite keeps its ``OPTIONS`` and
    ``TARGETS`` there), or None."""
    return getattr(importlib.import_module(recipe.evaluate.__module__), name, None)


def _recipe_targets(name: str) -> str:
    from detlearn.recipes import get_recipe

    recipe = get_recipe(name)
    targets = _evaluation_attribute(recipe, "TARGETS")
    if not targets:
        raise ValueError(f"recipe {name}: its evaluation module defines no TARGETS")
    rows = ["| metric (in `metrics.json`) | target |", "|---|---|"]
    rows += [f"| `{key}` | {_cell(f'{op} {value:g}')} |" for key, (op, value) in targets.items()]
    return "\n".join(rows) + "\n"


# --- architecture -------------------------------------------------------------------------


def _layers() -> str:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    contracts = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    rows = ["| layer (top to bottom) | what it is |", "|---|---|"]
    for layer in layers:
        for name in (n.strip() for n in layer.split("|")):
            module = importlib.import_module(name)
            summary = inspect.cleandoc(module.__doc__ or "").split("\n\n")[0].replace("\n", " ")
            sibling = " (beside the one above)" if not layer.startswith(name) else ""
            rows.append(f"| `{name}`{sibling} | {_prose(summary)} |")
    return "\n".join(rows) + "\n"


# --- command line -------------------------------------------------------------------------


def _cli_reference() -> str:
    from detlearn.cli import app

    root = typer.main.get_command(app)
    parts = []
    for path, command in _commands(root, ("detlearn",)):
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        usage = " ".join([*path, "[OPTIONS]", *(p.name.upper() for p in arguments)])
        rows = ["| argument or option | meaning | default |", "|---|---|---|"]
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            if param.param_type_name == "argument":
                names, shown = param.name.upper(), "required" if param.required else ""
            else:
                names = ", ".join(param.opts + param.secondary_opts)
                default = param.default
                shown = (
                    "required"
                    if param.required
                    else ""
                    if default is None or default == ()
                    else f"`{default}`"
                )
            rows.append(f"| `{names}` | {_prose(getattr(param, 'help', None) or '')} | {shown} |")
        help_text = inspect.cleandoc(command.help or "")
        parts.append(f"## `{' '.join(path)}`\n\n{help_text}\n\n" + _fenced(usage, "text"))
        if len(rows) > 2:
            parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def _commands(command: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    """The leaf commands below ``command`` (a typer group or command) with their paths."""
    if not hasattr(command, "list_commands"):
        return [(path, command)]
    ctx = command.make_context(path[-1], [], resilient_parsing=True)
    found = []
    for name in command.list_commands(ctx):
        found += _commands(command.get_command(ctx, name), (*path, name))
    return found


# --- the catalogue of faults and hostile input ----------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
#: The test files whose cases make the catalogue (docs/robustness.md), in its order.
CATALOGUE = (
    "tests/faults/test_kill_and_resume.py",
    "tests/test_parallel.py",
    "tests/io/test_fuzz_root.py",
    "tests/io/test_sources.py",
    "tests/test_inputs.py",
    "tests/test_integrity.py",
    "tests/models/test_registry_safety.py",
    "tests/export/test_sidecar_and_flows.py",
    "tests/test_config.py",
    "tests/test_config_fuzz.py",
    "tests/io/test_expressions.py",
    "tests/test_prepare_messages.py",
    "tests/test_out_folders.py",
    "tests/test_simulate_estimate.py",
    "tests/test_training_memory.py",
    "tests/test_properties.py",
    "tests/test_evaluate_reference.py",
    "tests/test_determinism.py",
)
_CASE_CHARS = 110  # a case's source beyond this is cut


def _catalogue() -> str:
    """Every test of the ``CATALOGUE`` files as a sentence (its name), with its parameter
    cases (``pytest.mark.parametrize`` lists, read from the source, module constants resolved),
    its hypothesis strategies and the messages it expects (``pytest.raises(match=...)``)."""
    parts = []
    for name in CATALOGUE:
        source = (ROOT / name).read_text(encoding="utf-8")
        tree = ast.parse(source)
        constants = {
            target.id: node.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        items = [
            _catalogue_item(node, source, constants)
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        ]
        parts.append(f"### `{name}`\n\n" + "\n".join(items) + "\n")
    return "\n".join(parts)


def _catalogue_item(test: ast.FunctionDef, source: str, constants: dict[str, ast.AST]) -> str:
    sentence = test.name.removeprefix("test_").replace("_", " ")
    lines, params = [f"- **{sentence}**"], set()
    for decorator in test.decorator_list:
        call = decorator if isinstance(decorator, ast.Call) else None
        if call is None:
            continue
        what = ast.get_source_segment(source, call.func) or ""
        if what.endswith("parametrize") and len(call.args) >= 2:
            values = call.args[1]
            if isinstance(values, ast.Name) and values.id in constants:
                values = constants[values.id]
            params |= set(_argnames(call.args[0]).split(", "))
            if isinstance(values, (ast.List, ast.Tuple)):
                cases = [_code(ast.get_source_segment(source, v)) for v in values.elts]
                lines.append(
                    f"    - {len(cases)} cases of {_code(_argnames(call.args[0]))}: "
                    + "; ".join(cases)
                )
            else:
                lines.append(f"    - cases: {_code(ast.get_source_segment(source, values))}")
        elif what.endswith("given"):
            strategies = ", ".join(
                f"{k.arg}={ast.get_source_segment(source, k.value)}" for k in call.keywords
            )
            lines.append(f"    - hypothesis: {_code(strategies)}")
    matches = [
        ast.get_source_segment(source, k.value)
        for node in ast.walk(test)
        if isinstance(node, ast.Call)
        and (ast.get_source_segment(source, node.func) or "") in ("pytest.raises", "raises")
        for k in node.keywords
        if k.arg == "match"
    ]
    if matches:
        shown = [f"the case's {_code(m)}" if m in params else _code(m) for m in matches]
        lines.append("    - the error must match: " + "; ".join(shown))
    return "\n".join(lines)


def _argnames(node: ast.AST) -> str:
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, (ast.Tuple, ast.List)):
        return ", ".join(str(getattr(e, "value", "?")) for e in node.elts)
    return "?"


def _code(text: str | None) -> str:
    """One code span of ``text`` on one line, cut to ``_CASE_CHARS``."""
    text = " ".join((text or "").split()).replace("`", "'")
    if len(text) > _CASE_CHARS:
        text = text[: _CASE_CHARS - 1] + "…"
    return f"`` {text} ``"
