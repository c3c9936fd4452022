r"""A griffe extension for the API pages: docstrings written for Sphinx and doctest read as Markdown.

The project's docstrings use reStructuredText roles (:func:`name`), double-backtick literals and
doctest examples (``>>>`` lines with their output). Rendered as Markdown, the examples would
become nested quotes; this extension fences each example as a ``pycon`` block and turns the roles
into inline code before mkdocstrings renders the docstring.

>>> example = ">" * 3 + " 1 + 1\n2"
>>> lines = markdown(f"See :func:`make_memory`.\n\n{example}\n\nDone.").splitlines()
>>> lines[0], lines[2], lines[3] == example.splitlines()[0], lines[5], lines[-1]
('See `make_memory`.', '```pycon', True, '```', 'Done.')
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`~?([^`]+)`")


def markdown(text: str) -> str:
    """``text`` with roles as inline code and each doctest example fenced."""
    out, example = [], False
    for line in ROLE.sub(r"`\1`", text).split("\n"):
        starts = line.lstrip().startswith(">>>")
        if starts and not example:
            out.append("```pycon")
            example = True
        elif example and not line.strip():
            out.append("```")
            example = False
        out.append(line)
    if example:
        out.append("```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Rewrite every docstring with :func:`markdown` as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
