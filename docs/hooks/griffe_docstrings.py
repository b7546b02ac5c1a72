"""Griffe extension: read the package's docstrings as they are written (Google style with two
habits of reStructuredText), without editing them.

- ``Example:`` (singular) is an examples section, like ``Examples:``, so its ``>>>`` lines
  render as a Python console block instead of nested block quotes;
- a paragraph ending in ``::`` (reST's "a literal block follows") ends in ``:``; the indented
  block after it is already a code block in Markdown.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
LITERAL = re.compile(r"(\S)::[ \t]*$", re.MULTILINE)


class ReadDocstrings(griffe.Extension):
    """Rewrite each docstring's reST habits before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called for every object griffe loads (module, class, function, attribute)."""
        if obj.docstring is not None:
            value = EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = LITERAL.sub(r"\1:", value)
