"""Columns and selections as vectorized expressions over branches (weaver-core's ``new_variables``).

An expression is a small, checked subset of Python evaluated on whole awkward/numpy arrays, never
event by event:

- branch names, numbers, ``True``/``False``/``None``, ``pi``, ``nan``, ``inf``;
- arithmetic ``+ - * / // % **``, comparisons (chains like ``0 < x < 1`` included), bitwise
  ``& | ^ ~ << >>``; ``and``/``or``/``not`` act element-wise as ``&``/``|``/``~`` (so ROOT-style
  cuts read as written). ``& | ^`` bind tighter than a comparison in Python (not in a ROOT cut),
  so an unbracketed ``&``/``|``/``^`` operand of a comparison (``a == 1 & b > 0``, which Python
  reads as ``a == (1 & b) > 0``) is rejected with the advice to bracket each comparison;
- ROOT's (C++) ``&&``, ``||`` and ``!``, read as ``and``, ``or`` and C's logical not: ``!x`` is
  ``x == 0`` and binds as tightly as in C (``!x > 0`` is ``(x == 0) > 0``); ``!=`` stays;
- subscripts: ``x[:, 0]`` (first element of every entry), ``x[x > 0]`` (mask), and
  ``values[index]`` where ``index`` holds one integer per entry: the element ``index`` of each
  entry's list (FEDHEX's ``TwoProng_massPi0[CBL_RecoPhi_twoprongindex]``). A negative or
  out-of-range per-entry index gives a missing value (None), which a selection reads as False;
- fixed-size array leaves (EDM4hep's ``C.covMatrix.values[6]``, read as ``n * var * 6``):
  ``C.covMatrix.values[k]`` (or ``C.covMatrix[k]``) is element ``k`` of every array, as in
  ``TTree::Draw``, whether the branch is named with its size (``values[6]``) or without; a
  constant index of an array whose innermost dimension has a fixed size picks that element;
- calls of whitelisted functions: numpy's, bare or as ``np.``/``numpy.`` (``sqrt``, ``arccos``,
  ``where``, ``clip``, ...; see ``NUMPY_FUNCTIONS``), and awkward's as ``ak.``/``awkward.`` with
  awkward's own semantics (``ak.num(x)``, ``ak.sum(x, axis=1)``; see ``AWKWARD_FUNCTIONS``);
- dotted EDM4hep leaf names such as ``MCParticles.momentum.x`` when that is a branch.

Anything else (lambda, comprehensions, strings, attribute access other than the above, dunder
names) is rejected when the expression is built. A ``ColumnSet`` evaluates a selection and named
columns; a column may use other columns, and each must give exactly one number per entry.

Example:
    >>> import numpy as np
    >>> cols = ColumnSet({"p": "sqrt(px**2 + pz**2)", "theta": "arccos(pz / p)"}, "p > 0.5")
    >>> values, n_before, n_after = cols.evaluate(
    ...     {"px": np.array([0.3, 0.0]), "pz": np.array([0.4, 1.0])})
    >>> (n_before, n_after), values["theta"].round(3).tolist()
    ((2, 1), [0.0])
"""

from __future__ import annotations

import ast
import copy
import re
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import awkward as ak
import numpy as np

from detlearn.errors import DetlearnError
from detlearn.io.sources import closest

__all__ = [
    "ALLOWED_KEYWORDS",
    "AWKWARD_FUNCTIONS",
    "MAX_DEPTH",
    "MAX_EXPONENT",
    "MAX_LENGTH",
    "NUMPY_FUNCTIONS",
    "ColumnSet",
    "Expression",
]

#: Keyword arguments a function call may take (``ak.sum(x, axis=1)``).
ALLOWED_KEYWORDS = frozenset({"axis", "keepdims", "decimals", "ddof"})
#: Resource limits of one expression: characters, nesting levels, size of a constant exponent.
MAX_LENGTH = 10_000
MAX_DEPTH = 100
MAX_EXPONENT = 1024


def _clip(x: Any, lower: Any, upper: Any) -> Any:
    # np.clip is not a ufunc and awkward cannot dispatch it on jagged arrays.
    return np.minimum(np.maximum(x, lower), upper)


NUMPY_FUNCTIONS: dict[str, Callable[..., Any]] = {
    **{
        name: getattr(np, name)
        for name in (
            "sqrt abs log log10 log1p exp expm1 sin cos tan arccos arcsin arctan arctan2 "
            "sinh cosh tanh hypot minimum maximum floor ceil sign square isnan isfinite "
            "degrees radians"
        ).split()
    },
    # ak.where works for numpy and awkward inputs alike (np.where cannot broadcast jagged).
    "where": ak.where,
    "clip": _clip,
}
AWKWARD_FUNCTIONS: dict[str, Callable[..., Any]] = {
    name: getattr(ak, name)
    for name in (
        "num firsts sum prod max min mean std any all count flatten fill_none pad_none where "
        "argmax argmin local_index sort"
    ).split()
}
_CONSTANTS = {"pi": np.pi, "nan": np.nan, "inf": np.inf}
_NUMPY_NS = types.SimpleNamespace(**NUMPY_FUNCTIONS, **_CONSTANTS)
_AWKWARD_NS = types.SimpleNamespace(**AWKWARD_FUNCTIONS)
_MODULES = {"np": _NUMPY_NS, "numpy": _NUMPY_NS, "ak": _AWKWARD_NS, "awkward": _AWKWARD_NS}
_MODULE_FUNCTIONS = {
    "np": NUMPY_FUNCTIONS,
    "numpy": NUMPY_FUNCTIONS,
    "ak": AWKWARD_FUNCTIONS,
    "awkward": AWKWARD_FUNCTIONS,
}
_SUBSCRIPT = "_detlearn_subscript"
_ELEMENT = "_detlearn_element"
_ALIAS = "_detlearn_v{}"

_ALLOWED_OPERATORS = (
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
    ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift, ast.RShift,
    ast.UAdd, ast.USub, ast.Invert, ast.Not, ast.And, ast.Or,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE,
)  # fmt: skip
_FORBIDDEN_NAMES = {
    ast.Lambda: "lambda",
    ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a comprehension",
    ast.IfExp: "'a if c else b' (use where(c, a, b))",
    ast.NamedExpr: "':='",
    ast.Starred: "'*' unpacking",
    ast.JoinedStr: "an f-string",
    ast.List: "a list",
    ast.Dict: "a dict",
    ast.Set: "a set",
    ast.Tuple: "a tuple",
    ast.Await: "await",
}


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for an attribute chain on a plain name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _per_entry_index(value: Any, index: Any) -> bool:
    """True when ``index`` holds one integer per entry of the jagged (or 2-D) ``value``."""
    if not isinstance(index, ak.Array | np.ndarray) or not isinstance(value, ak.Array | np.ndarray):
        return False
    if index.ndim != 1 or value.ndim < 2 or len(index) != len(value):
        return False
    content = ak.type(ak.Array(index) if isinstance(index, np.ndarray) else index).content
    if isinstance(content, ak.types.OptionType):
        content = content.content
    return isinstance(content, ak.types.NumpyType) and content.primitive.startswith(("int", "uint"))


def _subscript(value: Any, index: Any) -> Any:
    """``value[index]``, except that one integer per entry picks that element of each entry."""
    if not _per_entry_index(value, index):
        return value[index]
    values = ak.from_regular(ak.Array(value), axis=1)
    idx = ak.to_numpy(ak.fill_none(ak.Array(index), -1)).astype(np.int64)
    counts = ak.to_numpy(ak.num(values, axis=1))
    # Index branches mark "no candidate" with -1; such entries (and any out of range) become
    # None instead of an error, because a vectorized cut cannot short-circuit around them.
    ok = (idx >= 0) & (idx < counts)
    # One index or none per entry (singletons): also right for a chunk the cut left empty.
    return ak.firsts(values[ak.singletons(ak.mask(ak.Array(np.where(ok, idx, 0)), ok))])


def _fixed_innermost(value: Any) -> bool:
    """Whether the innermost dimension of ``value`` has a fixed size (``var * 6 * float32``,
    a 2-D numpy array): an array per element, not a list per entry."""
    if isinstance(value, np.ndarray):
        return value.ndim >= 2
    if not isinstance(value, ak.Array):
        return False
    kind, innermost = ak.type(value).content, None
    while isinstance(kind, ak.types.ListType | ak.types.RegularType | ak.types.OptionType):
        if not isinstance(kind, ak.types.OptionType):
            innermost = kind
        kind = kind.content
    return isinstance(innermost, ak.types.RegularType)


def _element(value: Any, index: int) -> Any:
    """``value[index]`` for a constant ``index``, except that of fixed-size arrays (EDM4hep's
    ``covMatrix.values``) it is element ``index`` of every array."""
    return value[..., index] if _fixed_innermost(value) else value[index]


#: ROOT's (C++) logical operators; ``!`` but not ``!=``.
_ROOT_LOGIC = re.compile(r"&&|\|\||!(?!=)")
#: A leaf of fixed-size arrays named with its size, ``C.covMatrix.values[6]``.
_SIZED_LEAF = re.compile(r"^(?P<base>.+)\[\d+\]$")


def _root_logic(text: str) -> tuple[str, frozenset[int]]:
    """``text`` with ROOT's ``&&`` and ``||`` spelled ``and`` and ``or``, and each ``!`` (a
    logical not) as ``~``; returns it and the (byte) offsets of those ``~``.

    Example:
        >>> _root_logic("!(a>0)&&b!=1||!c")
        ('~(a>0) and b!=1 or ~c', frozenset({0, 19}))
    """
    parts: list[str] = []
    nots: set[int] = set()
    end = 0
    for match in _ROOT_LOGIC.finditer(text):
        parts.append(text[end : match.start()])
        token = match.group()
        if token == "!":
            nots.add(len("".join(parts).encode()))
        parts.append({"&&": " and ", "||": " or ", "!": "~"}[token])
        end = match.end()
    parts.append(text[end:])
    return "".join(parts), frozenset(nots)


class _LogicalNot(ast.NodeTransformer):
    """Turns the ``~`` that stood for ROOT's ``!`` into C's logical not, ``operand == 0``."""

    def __init__(self, offsets: frozenset[int]) -> None:
        self.offsets = offsets

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Invert) and node.col_offset in self.offsets:
            test = ast.Compare(left=node.operand, ops=[ast.Eq()], comparators=[ast.Constant(0)])
            return ast.copy_location(test, node)
        return node


def _shorthands(known: Collection[str]) -> dict[str, str]:
    """Shorter names of fixed-size array leaves: ``C.covMatrix.values[6]`` is also
    ``C.covMatrix.values`` and ``C.covMatrix``, ``C.covMatrix.values`` also ``C.covMatrix``
    (where no branch has that name)."""
    names: dict[str, str] = {}
    for leaf in known:
        sized = _SIZED_LEAF.match(leaf)
        base = sized.group("base") if sized else leaf
        for short in {base, base.removesuffix(".values")} - {leaf}:
            names.setdefault(short, leaf)
    return {short: leaf for short, leaf in names.items() if short not in known}


def _constant(node: ast.AST) -> bool:
    """Whether ``node`` is built of number constants alone (no name, no call)."""
    return all(isinstance(n, (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop))
               for n in ast.walk(node))  # fmt: skip


def _integer(node: ast.AST) -> bool:
    """Whether ``node`` is an integer constant, negative ones included (``-1``)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) is int


def _depth(node: ast.AST) -> int:
    """Nesting depth of an AST, without recursion (a deep tree must not crash the check)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        current, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in ast.iter_child_nodes(current))
    return deepest


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # awkward appends a link to the C++ kernel, which says nothing to the user.
    text = re.sub(r"\s*\(in compiled code: .*", "", lines[0]) if lines else "no detail"
    return f"{type(err).__name__}: {text[:200]}"


class _Checker(ast.NodeVisitor):
    """Rejects every construct outside the safe subset (independent of the branches present)."""

    def __init__(self, fail: Callable[[str], DetlearnError], text: str) -> None:
        self.fail = fail
        self.text = text

    def generic_visit(self, node: ast.AST) -> None:
        if type(node) in _FORBIDDEN_NAMES:
            raise self.fail(f"{_FORBIDDEN_NAMES[type(node)]} is not allowed")
        allowed = (
            ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Subscript,
            ast.Slice, ast.Load, *_ALLOWED_OPERATORS,
        )  # fmt: skip
        if not isinstance(node, allowed):
            raise self.fail(f"'{type(node).__name__}' is not allowed")
        super().generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        # ROOT's cut strings (C++) compare before they combine; Python's & | ^ bind tighter
        # than a comparison, so 'a == 1 & b > 0' is a == (1 & b) > 0: kept silently, it would
        # select the wrong rows.
        for operand in (node.left, *node.comparators):
            if (
                isinstance(operand, ast.BinOp)
                and isinstance(operand.op, (ast.BitAnd, ast.BitOr, ast.BitXor))
                and not self._bracketed(operand)
            ):
                raise self.fail(
                    f"'{ast.unparse(operand)}' is computed before the comparison next to it "
                    "(& | ^ bind tighter than == < > in Python, unlike in a ROOT cut): put each "
                    "comparison in brackets, e.g. '(x == 1) & (y > 0)', or join them with 'and'"
                )
        self.generic_visit(node)

    def _bracketed(self, node: ast.expr) -> bool:
        before, after = self.text[: node.col_offset], self.text[node.end_col_offset or 0 :]
        return before.rstrip().endswith("(") and after.lstrip().startswith(")")

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.visit(node.value)
        # A tuple is allowed only as a multi-axis index (x[:, 0]), never as a value.
        for part in node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]:
            self.visit(part)

    def visit_Constant(self, node: ast.Constant) -> None:
        if node.value not in (None, Ellipsis) and type(node.value) not in (int, float, bool):
            raise self.fail(f"the constant {node.value!r} is not allowed (numbers only)")
        if type(node.value) is int and abs(node.value) > 2**63:
            raise self.fail(f"the constant {node.value} is too large (at most 2**63)")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id.startswith("__"):
            raise self.fail(f"the name '{node.id}' is not allowed")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = _dotted(node)
        if dotted is None or any(part.startswith("__") for part in dotted.split(".")):
            raise self.fail(
                f"attribute access '.{node.attr}' is not allowed (only np./ak. functions and "
                "dotted branch names)"
            )

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            self.visit_Name(func)
            if func.id not in NUMPY_FUNCTIONS:
                hint = f"; call it as ak.{func.id}(...)" if func.id in AWKWARD_FUNCTIONS else ""
                raise self.fail(f"unknown function '{func.id}'{hint}")
        else:
            dotted = _dotted(func)
            module, _, name = (dotted or "").partition(".")
            if name not in _MODULE_FUNCTIONS.get(module, {}):
                raise self.fail(f"unknown function '{dotted or ast.unparse(func)}'")
        for arg in node.args:
            self.visit(arg)
        for kw in node.keywords:
            if kw.arg is None or kw.arg.startswith("__"):
                raise self.fail("'**' keyword unpacking is not allowed")
            if kw.arg not in ALLOWED_KEYWORDS:
                # out= writes into another column, where= leaves uninitialized memory.
                raise self.fail(
                    f"the keyword argument '{kw.arg}=' is not allowed "
                    f"(allowed: {', '.join(sorted(ALLOWED_KEYWORDS))})"
                )
            self.visit(kw.value)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        # Python evaluates a power of whole numbers exactly: 10**10**10 never ends.
        if isinstance(node.op, ast.Pow) and _constant(node.right):
            exponent = node.right
            if not (isinstance(exponent, ast.Constant) and abs(exponent.value) <= MAX_EXPONENT):
                raise self.fail(
                    f"the exponent '{ast.unparse(exponent)}' is not allowed (a number of at "
                    f"most {MAX_EXPONENT} in size)"
                )
        self.generic_visit(node)


class _Resolver(ast.NodeTransformer):
    """Maps names and dotted branch names to safe aliases; rewrites and/or/not and subscripts."""

    def __init__(self, known: Collection[str]) -> None:
        self.known = known
        self.shorthands = _shorthands(known)
        self.aliases: dict[str, str] = {}
        self.unknown: list[str] = []

    def _name(self, name: str, node: ast.AST) -> ast.AST:
        name = self.shorthands.get(name, name)
        if name in self.known:
            alias = self.aliases.setdefault(name, _ALIAS.format(len(self.aliases)))
            return ast.copy_location(ast.Name(id=alias, ctx=ast.Load()), node)
        if name in _CONSTANTS:
            return node
        self.unknown.append(name)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return self._name(node.id, node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        dotted = _dotted(node)
        assert dotted is not None  # guaranteed by _Checker
        module, _, attr = dotted.partition(".")
        if dotted not in self.known and module in _MODULES and attr in _CONSTANTS:
            return node
        return self._name(dotted, node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        # The function itself is checked and never a branch; only its arguments resolve.
        node.args = [self.visit(arg) for arg in node.args]
        for kw in node.keywords:
            kw.value = self.visit(kw.value)
        if isinstance(node.func, ast.Name):
            node.func = ast.Attribute(
                value=ast.Name(id="np", ctx=ast.Load()), attr=node.func.id, ctx=ast.Load()
            )
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        op = ast.BitAnd() if isinstance(node.op, ast.And) else ast.BitOr()
        values = [self.visit(v) for v in node.values]
        out = values[0]
        for value in values[1:]:
            out = ast.BinOp(left=out, op=op, right=value)
        return ast.copy_location(out, node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            node.op = ast.Invert()
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if len(node.ops) == 1:
            return node
        # Python chains with 'and', which arrays refuse; '0 < x < 1' means (0 < x) & (x < 1).
        operands = [node.left, *node.comparators]
        parts = [
            ast.Compare(left=a, ops=[op], comparators=[b])
            for a, op, b in zip(operands, node.ops, operands[1:], strict=False)
        ]
        out: ast.expr = parts[0]
        for part in parts[1:]:
            out = ast.BinOp(left=out, op=ast.BitAnd(), right=part)
        return ast.copy_location(out, node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.slice, ast.Slice | ast.Tuple):
            return node
        if _constant(node.slice) and not _integer(node.slice):
            return node  # x[None], x[...]
        helper = _ELEMENT if _constant(node.slice) else _SUBSCRIPT
        call = ast.Call(
            func=ast.Name(id=helper, ctx=ast.Load()), args=[node.value, node.slice], keywords=[]
        )
        return ast.copy_location(call, node)


class Expression:
    """One checked expression over branches.

    Args:
        text: the expression, e.g. ``"arccos(pz / sqrt(px**2 + py**2 + pz**2))"``. Whitespace
            (YAML line breaks included) is collapsed.
        column: the column it defines, if any. Its own name inside the expression means the
            branch of that name (``x: "x * 1000"``), not the column.
        label: how error messages name it; default ``column 'NAME'``.

    Raises:
        DetlearnError: when the text does not parse or uses a construct outside the safe subset.

    Example:
        >>> import numpy as np
        >>> Expression("MCParticles.momentum.x * 2").evaluate(
        ...     {"MCParticles.momentum.x": np.array([1.0, 2.0])}).tolist()
        [2.0, 4.0]
    """

    def __init__(self, text: str, column: str | None = None, *, label: str | None = None) -> None:
        self.text = " ".join(str(text).split())
        self.column = column
        self.label = label if label is not None else (f"column '{column}'" if column else "")
        if len(self.text) > MAX_LENGTH:
            raise self._fail(f"{len(self.text):,} characters long (at most {MAX_LENGTH:,})")
        # ROOT's && || ! read as Python's and / or / a logical not.
        source, nots = _root_logic(self.text)
        try:
            self._tree = ast.parse(source, mode="eval")
        except SyntaxError as err:
            pos = max((err.offset or 1) - 1, 0)
            raise DetlearnError(
                f"cannot parse {self._describe()}: {err.msg} at char {pos} "
                f"({source[pos : pos + 10]!r})"
            ) from None
        except (RecursionError, MemoryError):
            raise self._fail(f"nested too deeply (at most {MAX_DEPTH} levels)") from None
        if _depth(self._tree) > MAX_DEPTH:
            raise self._fail(f"nested too deeply (at most {MAX_DEPTH} levels)")
        _Checker(self._fail, source).visit(self._tree)
        self._tree = _LogicalNot(nots).visit(self._tree)
        # Every chunk of a dataset resolves against the same names; copying, rewriting and
        # compiling the tree for each chunk cost half as much as the arithmetic on it (measured).
        self._resolved: dict[frozenset[str], tuple[types.CodeType, dict[str, str]]] = {}

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def _describe(self) -> str:
        text = self.text if len(self.text) <= 120 else f"{self.text[:100]}..."
        return f"expression '{text}'" + (f" ({self.label})" if self.label else "")

    def _fail(self, reason: str) -> DetlearnError:
        return DetlearnError(f"{self._describe()}: {reason}")

    def _resolve(
        self, known: Collection[str], branches: Collection[str], where: str
    ) -> tuple[types.CodeType, dict[str, str]]:
        """The compiled rewritten expression and {name: alias}.

        Unknown names raise with the closest branches.
        """
        key = frozenset(known)
        resolved = self._resolved.get(key)
        if resolved is not None:
            return resolved
        resolver = _Resolver(key)
        # NodeTransformer edits in place; the checked tree must stay reusable for the next chunk.
        tree = resolver.visit(copy.deepcopy(self._tree))
        if resolver.unknown:
            name = resolver.unknown[0]
            near = closest(name, branches)
            hint = f"; closest branches: {', '.join(near)}" if near else ""
            loc = f" in {where}" if where else ""
            raise DetlearnError(f"unknown name '{name}' in {self._describe()}{loc}{hint}")
        code = compile(ast.fix_missing_locations(tree), f"<expression {self.text}>", "eval")
        resolved = self._resolved[key] = (code, resolver.aliases)
        return resolved

    def names(self, known: Collection[str], where: str = "") -> set[str]:
        """The names in ``known`` (branches or columns) the expression refers to."""
        return set(self._resolve(known, known, where)[1])

    def branches(
        self, available: Collection[str], columns: Collection[str] = (), where: str = ""
    ) -> set[str]:
        """The branches (from ``available``) this expression reads.

        A name in ``columns`` (other than this expression's own column) refers to that column,
        even where a branch has the same name.

        Raises:
            DetlearnError: for a name that is neither a branch, a column nor a function; the
                message lists the three closest branch names.
        """
        others = set(columns) - {self.column}
        known = set(available) | others
        _, aliases = self._resolve(known, available, where)
        return {name for name in aliases if name not in others}

    def evaluate(self, arrays: Mapping[str, Any], where: str = "") -> Any:
        """Evaluate on whole arrays (awkward or numpy, one entry per event).

        Returns:
            An awkward array, or a numpy scalar when the expression reduces to one value.

        Raises:
            DetlearnError: naming the expression and ``where`` (e.g. the file) for an unknown
                name or any failure while evaluating (jagged/flat broadcast mismatches, ...).
        """
        code, aliases = self._resolve(arrays.keys(), arrays.keys(), where)
        namespace: dict[str, Any] = {
            "__builtins__": {},
            _SUBSCRIPT: _subscript,
            _ELEMENT: _element,
            **_MODULES,
        }
        namespace.update(_CONSTANTS)
        namespace.update({alias: arrays[name] for name, alias in aliases.items()})
        try:
            # NaN from sqrt(-1) or 0/0 is the answer, not a warning; callers check finiteness.
            with np.errstate(all="ignore"):
                result = eval(code, namespace)
        except Exception as err:
            loc = f" in {where}" if where else ""
            raise DetlearnError(
                f"cannot evaluate {self._describe()}{loc}: {_first_line(err)}"
            ) from None
        if isinstance(result, np.ndarray):
            return ak.Array(result) if result.ndim else result[()]
        if isinstance(result, ak.Array):
            return result
        return np.asarray(result)[()]


def _type_name(values: ak.Array) -> str:
    return str(ak.type(values).content)


class ColumnSet:
    """Named columns and an optional selection, evaluated together on one chunk of entries.

    Args:
        columns: ``{name: expression}``; an expression of None means the branch ``name``.
            A column may use other columns in any order (cycles are an error).
        selection: a boolean expression per entry; entries where it is False (or missing) are
            dropped before the columns are computed, so a column may rely on the cut
            (``GenPhi_mass[:, 0]`` after ``ak.num(GenPhi_mass) > 0``). It may use columns.
        require: boolean expressions of branches that every entry read must satisfy
            (``ak.num(raw) == 8``: a fixed number of samples); an entry where one is False or
            missing is an error naming the expression, the entries that fail and the first.
        labels: how errors name a column (default ``column 'NAME'``), e.g. with where it
            was defined: ``column 'phi' from recipe mass-grid's defaults``.

    Example:
        >>> import awkward as ak
        >>> cols = ColumnSet({"e1": "hitE[:, 0]"}, "ak.num(hitE) > 0")
        >>> cols.evaluate({"hitE": ak.Array([[1.5, 2.0], [], [3.0]])})[0]["e1"].tolist()
        [1.5, 3.0]
    """

    def __init__(
        self,
        columns: Mapping[str, str | None],
        selection: str | None = None,
        require: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.labels = {name: (labels or {}).get(name) or f"column '{name}'" for name in columns}
        self.columns = {
            name: Expression(name if expr is None else expr, column=name, label=self.labels[name])
            for name, expr in columns.items()
        }
        self.selection = Expression(selection, label="selection") if selection else None
        self.require = [Expression(text, label="data.require") for text in require]

    def _dependencies(
        self, available: Collection[str], where: str
    ) -> tuple[dict[str, set[str]], set[str]]:
        """The columns each column uses directly, and those the selection uses."""
        names = set(self.columns)
        deps: dict[str, set[str]] = {}
        for name, expr in self.columns.items():
            used = expr.names(set(available) | (names - {name}), where)
            deps[name] = {n for n in used if n in names and n != name}
        selection_deps: set[str] = set()
        if self.selection is not None:
            selection_deps = self.selection.names(set(available) | names, where) & names
        return deps, selection_deps

    def _order(self, deps: Mapping[str, set[str]]) -> list[str]:
        """Columns in an order where each comes after the columns it uses."""
        order: list[str] = []
        state: dict[str, str] = {}

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "active":
                cycle = [*path[path.index(name) :], name]
                raise DetlearnError("columns refer to each other in a cycle: " + " -> ".join(cycle))
            state[name] = "active"
            for dep in sorted(deps[name]):
                visit(dep, [*path, name])
            state[name] = "done"
            order.append(name)

        for name in self.columns:
            visit(name, [])
        return order

    def branches(self, available: Collection[str], where: str = "") -> set[str]:
        """All branches needed by the columns and the selection.

        Raises:
            DetlearnError: for an unknown name (with the closest branches) or a column cycle.
        """
        self._order(self._dependencies(available, where)[0])
        names = set(self.columns)
        needed: set[str] = set()
        for expr in self.columns.values():
            needed |= expr.branches(available, names, where)
        if self.selection is not None:
            needed |= self.selection.branches(available, names, where)
        for expr in self.require:
            needed |= expr.branches(available, set(), where)
        return needed

    def evaluate(
        self, arrays: Mapping[str, Any], where: str = ""
    ) -> tuple[dict[str, np.ndarray], int, int]:
        """Apply the selection, then compute every column.

        Args:
            arrays: branch name -> awkward or numpy array, all with one entry per event.
            where: location named in errors (e.g. ``file.root:events[0:1000]``).

        Returns:
            ``(columns, n_before, n_after)``: one flat numpy array per column (its natural
            numeric dtype), in the order given, and the entry counts before/after the selection.

        Raises:
            DetlearnError: a jagged, missing-valued or non-numeric column, a non-boolean or
                jagged selection, an unknown name, or a failure while evaluating.
        """
        if not arrays:
            raise DetlearnError(f"no branches to evaluate columns on{_at(where)}")
        n = len(next(iter(arrays.values())))
        for expr in self.require:
            ok = self._mask(expr, arrays, n, where)
            if not ok.all():
                raise DetlearnError(
                    f"data.require '{expr.text}' fails for {int((~ok).sum())} of {n} entries"
                    f"{_at(where)} (the first: entry {int(np.argmin(ok))} of the chunk)"
                )
        deps, selection_deps = self._dependencies(arrays.keys(), where)
        order = self._order(deps)
        needed_by_selection = _closure(selection_deps, deps)
        # Columns stay unchecked awkward values until after the cut: one the selection uses may
        # be missing exactly where the selection drops the entry.
        raw: dict[str, Any] = {}
        for name in order:
            if name in needed_by_selection:
                raw[name] = self._raw(name, arrays, raw, n, where)
        n_after = n
        if self.selection is not None:
            mask = self._mask(self.selection, {**arrays, **raw}, n, where)
            n_after = int(mask.sum())
            if n_after != n:
                arrays = {k: v[mask] for k, v in arrays.items()}
                raw = {k: v[mask] if isinstance(v, ak.Array) else v for k, v in raw.items()}
        for name in order:
            if name not in raw:
                raw[name] = self._raw(name, arrays, raw, n_after, where)
        columns = {name: self._finish(name, raw[name], n_after, where) for name in self.columns}
        return columns, n, n_after

    def _what(self, name: str) -> str:
        return f"{self.labels[name]} (expr '{self.columns[name].text}')"

    def _raw(
        self, name: str, arrays: Mapping[str, Any], raw: Mapping[str, Any], n: int, where: str
    ) -> Any:
        """A column's value as evaluated: an awkward array of ``n`` entries, or a constant."""
        expr = self.columns[name]
        scope = {**arrays, **{k: v for k, v in raw.items() if k != name}}
        result = expr.evaluate(scope, where)
        if not isinstance(result, ak.Array):
            if expr.names(scope.keys()):
                raise DetlearnError(
                    f"{self._what(name)} reduces all entries to one value{_at(where)}; give "
                    "axis=1 for a value per entry"
                )
        elif len(result) != n:
            raise DetlearnError(
                f"{self._what(name)} has {len(result)} entries, expected {n}{_at(where)}; note "
                "that x[0] is the first entry, x[:, 0] the first element of every entry"
            )
        return result

    def _finish(self, name: str, value: Any, n: int, where: str) -> np.ndarray:
        """The column as a flat numpy array, or a clear error saying what it is instead."""
        if not isinstance(value, ak.Array):
            return np.full(n, value)
        return _flat(value, self._what(name), where)

    @staticmethod
    def _mask(expr: Expression, scope: Mapping[str, Any], n: int, where: str) -> np.ndarray:
        """A boolean expression (the selection, a requirement) as a numpy mask; a missing
        value is False."""
        result = expr.evaluate(scope, where)
        what = f"{expr.label or 'expression'} '{expr.text}'"
        if not isinstance(result, ak.Array):
            return np.full(n, bool(result))
        content = ak.type(result).content
        if isinstance(content, ak.types.OptionType):
            # A missing value (e.g. a per-entry index of -1) fails the cut.
            result = ak.fill_none(result, False)
            content = content.content
        if not isinstance(content, ak.types.NumpyType):
            raise DetlearnError(
                f"{what} is jagged ({_type_name(result)}){_at(where)}; reduce it per entry "
                "(e.g. ak.any(...) or ak.all(...))"
            )
        if content.primitive != "bool":
            raise DetlearnError(
                f"{what} gives {content.primitive}, not true/false per entry{_at(where)}; "
                "compare it (e.g. x != 0)"
            )
        if len(result) != n:
            raise DetlearnError(f"{what} has {len(result)} entries, expected {n}{_at(where)}")
        return ak.to_numpy(result)


def _at(where: str) -> str:
    return f" in {where}" if where else ""


def _closure(start: set[str], deps: Mapping[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(start)
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(deps[name])
    return seen


def _flat(values: ak.Array, what: str, where: str) -> np.ndarray:
    """One number per entry as numpy, or a clear error saying what the values are instead."""
    content = ak.type(values).content
    if isinstance(content, ak.types.OptionType):
        missing = int(ak.sum(ak.is_none(values)))
        if missing:
            raise DetlearnError(
                f"{what} has {missing} missing values (None){_at(where)}; fill them "
                "(ak.fill_none(x, value)) or select entries that have one"
            )
        values = ak.drop_none(values)
        content = content.content
    if isinstance(content, ak.types.ListType | ak.types.RegularType):
        kind = "a string" if content.parameter("__array__") == "string" else "jagged"
        if kind == "jagged":
            raise DetlearnError(
                f"{what} is jagged ({_type_name(values)}){_at(where)}; reduce it "
                "(e.g. ak.firsts) or index it"
            )
        raise DetlearnError(f"{what} is {kind}, not a number{_at(where)}")
    if not isinstance(content, ak.types.NumpyType) or not (
        content.primitive == "bool" or content.primitive.startswith(("int", "uint", "float"))
    ):
        raise DetlearnError(f"{what} is {_type_name(values)}, not a number{_at(where)}")
    return ak.to_numpy(values)
