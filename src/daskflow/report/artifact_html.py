"""Artifacts as HTML: markdown rendered safely, tables from JSON, links that cannot run script.

An artifact's ``data`` is whatever a flow stored, so it is treated as hostile:

* **markdown** goes through markdown-it-py with raw HTML off, so ``<script>``
  in the text comes out as text. Link targets are limited to :func:`safe_href`
  schemes, and images are drawn only from inline ``data:image/...`` URIs; any
  other image becomes a link to it, because the report must not fetch anything
  from the network when opened.
* **table** data is JSON in any of the shapes people produce: a list of row
  objects (what ``create_table_artifact`` stores), ``{"columns": [...],
  "rows"|"data": [...]}`` (pandas' ``split`` orientation), a list of lists, or
  a mapping of column to values. Whatever else is shown as escaped text.
* **link** data is ``{"link": url, "link_text": text}``; a URL that is not
  http(s), mailto or relative is shown as text, not as a link.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from html import escape
from typing import Any
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

from daskflow.runstore.history import ArtifactInfo

__all__ = ["MAX_TABLE_ROWS", "render_artifact", "render_link", "render_markdown", "render_table", "safe_href"]

MAX_TABLE_ROWS = 1_000  # rows of a table artifact shown; the rest are counted
_SAFE_SCHEMES = frozenset({"http", "https", "mailto", ""})
_INLINE_IMAGE = re.compile(r"^data:image/(png|gif|jpeg|webp);", re.IGNORECASE)
# Browsers drop tabs and newlines inside URLs and ignore leading blanks: "java\tscript:" is a scheme.
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def safe_href(url: str) -> str | None:
    """``url`` when it is http(s), mailto or relative (not ``//host``), else None."""
    text = url.strip()
    if not text or _CONTROL.search(text) or text.startswith("//") or text.startswith("\\"):
        return None
    try:
        scheme = urlsplit(text).scheme.lower()
    except ValueError:
        return None
    return text if scheme in _SAFE_SCHEMES else None


def _validate_link(url: str) -> bool:
    return safe_href(url) is not None or bool(_INLINE_IMAGE.match(url.strip()))


def _render_image(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = self.renderInlineAsText(token.children or [], options, env)
    if _INLINE_IMAGE.match(src):
        return f'<img src="{escape(src)}" alt="{escape(alt)}">'
    href = safe_href(src)
    label = escape(f"[image: {alt or src}]")
    return f'<a href="{escape(href)}" rel="noopener noreferrer">{label}</a>' if href else label


def _markdown() -> MarkdownIt:
    # The "default" preset has tables and strikethrough; raw HTML stays off whatever the preset says.
    md = MarkdownIt("default", {"html": False, "linkify": False})
    md.validateLink = _validate_link  # type: ignore[method-assign]
    md.add_render_rule("image", _render_image)
    return md


_MD = _markdown()


def render_markdown(text: str) -> str:
    """Markdown as HTML, with raw HTML escaped and only safe link targets."""
    return str(_MD.render(text))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return escape(json.dumps(value, default=str))
    return escape(str(value))


def _table_shape(data: Any) -> tuple[list[str] | None, list[list[Any]]] | None:
    """(column names or None, rows as lists) for the JSON table shapes we accept; None for others."""
    if isinstance(data, dict):
        columns = data.get("columns")
        rows = data.get("rows", data.get("data"))
        if isinstance(columns, list) and isinstance(rows, list):
            names = [str(c) for c in columns]
            return names, [[row.get(c) for c in columns] if isinstance(row, dict) else _as_list(row) for row in rows]
        if data and all(isinstance(v, list) for v in data.values()):  # column -> values
            names = [str(k) for k in data]
            length = max(len(v) for v in data.values())
            return names, [[v[i] if i < len(v) else None for v in data.values()] for i in range(length)]
        return None
    if isinstance(data, list):
        if all(isinstance(row, dict) for row in data):
            names_seen: dict[str, None] = {}  # the union of keys, in the order they first appear
            for row in data:
                names_seen.update(dict.fromkeys(str(k) for k in row))
            names = list(names_seen)
            return names, [[{str(k): v for k, v in row.items()}.get(c) for c in names] for row in data]
        if all(isinstance(row, list) for row in data):
            return None, [list(row) for row in data]
        return ["value"], [[row] for row in data]
    return None


def _as_list(row: Any) -> list[Any]:
    return list(row) if isinstance(row, (list, tuple)) else [row]


def render_table(text: str) -> str:
    """A table artifact's JSON as an HTML table (see the module docstring for the shapes)."""
    try:
        shape = _table_shape(json.loads(text))
    except ValueError:
        shape = None
    if shape is None:
        return f'<p class="note">This table is not in a shape the report knows; its data:</p><pre>{escape(text)}</pre>'
    columns, rows = shape
    out = ['<div class="scroll"><table class="artifact-table">']
    if columns is not None:
        out.append("<thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in columns) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows[:MAX_TABLE_ROWS]:
        out.append("<tr>" + "".join(f"<td>{_cell(value)}</td>" for value in row) + "</tr>")
    out.append("</tbody></table></div>")
    if len(rows) > MAX_TABLE_ROWS:
        out.append(f'<p class="note">Showing the first {MAX_TABLE_ROWS:,} of {len(rows):,} rows.</p>')
    return "".join(out)


def render_link(text: str) -> str:
    """A link artifact: ``{"link": url, "link_text": text}`` (a bare URL is accepted too)."""
    try:
        data = json.loads(text)
    except ValueError:
        data = {"link": text}
    if not isinstance(data, dict):
        data = {"link": str(data)}
    url = str(data.get("link") or "")
    label = str(data.get("link_text") or url)
    href = safe_href(url)
    if href is None:
        return f'<p>{escape(label)} <span class="note">(not a web link: {escape(url)})</span></p>'
    return f'<p><a href="{escape(href)}" rel="noopener noreferrer">{escape(label)}</a></p>'


def render_artifact(artifact: ArtifactInfo) -> str:
    """The body of one artifact, by its type; unknown types show their data as text."""
    kind = artifact.type.lower()
    if kind == "markdown":
        return f'<div class="markdown">{render_markdown(artifact.data)}</div>'
    if kind == "table":
        return render_table(artifact.data)
    if kind == "link":
        return render_link(artifact.data)
    return f"<pre>{escape(artifact.data)}</pre>"
