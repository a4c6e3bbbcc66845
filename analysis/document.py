"""A small document model for the report, rendered both as Markdown and as self-contained HTML.

A document is a list of blocks. Text may use two inline forms, rendered in both outputs:
```code``` spans and ``[label](relative/path)`` links.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

INLINE_PATTERN = re.compile(r"`([^`]+)`|\[([^\]]+)\]\(([^)\s]+)\)")
HTML_STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       line-height: 1.45; color: #111; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left;
         vertical-align: top; }
thead th { border-bottom: 2px solid #333; }
tbody tr:nth-child(even) { background: #f6f6f6; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #333; }
code { background: #f0f0f0; padding: 0 0.2em; }
.table-wrap { overflow-x: auto; }
"""


@dataclass(frozen=True)
class Heading:
    """A section heading (level 1 is the title)."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of text."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A bulleted list."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table of text cells (format numbers first)."""

    frame: pd.DataFrame


@dataclass(frozen=True)
class Figure:
    """A figure: its PNG (shown; embedded in HTML), caption, and PDF (linked)."""

    png: Path
    caption: str
    pdf: Path | None = None


Block = Heading | Paragraph | Bullets | Table | Figure


def to_markdown(blocks: Sequence[Block], base_dir: Path) -> str:
    """The document as GitHub-flavoured Markdown; figure paths relative to ``base_dir``."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            parts.append(markdown_table(block.frame))
        elif isinstance(block, Figure):
            png = block.png.relative_to(base_dir)
            text = f"![{block.caption}]({png})\n\n{block.caption}"
            if block.pdf is not None:
                text += f" [PDF]({block.pdf.relative_to(base_dir)})"
            parts.append(text)
    return "\n\n".join(parts) + "\n"


def to_html(blocks: Sequence[Block], title: str) -> str:
    """The document as one self-contained HTML page: figures embedded as base64 PNG data URIs,
    tables as HTML tables; links (to CSV, LaTeX and PDF files) stay relative."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{inline_html(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{inline_html(block.text)}</p>")
        elif isinstance(block, Bullets):
            items = "".join(f"<li>{inline_html(item)}</li>" for item in block.items)
            body.append(f"<ul>{items}</ul>")
        elif isinstance(block, Table):
            body.append(f'<div class="table-wrap">{html_table(block.frame)}</div>')
        elif isinstance(block, Figure):
            data = base64.b64encode(block.png.read_bytes()).decode("ascii")
            pdf = f' <a href="{block.pdf.name}">PDF</a>' if block.pdf is not None else ""
            body.append(
                f'<figure><img alt="{html.escape(block.caption)}" '
                f'src="data:image/png;base64,{data}">'
                f"<figcaption>{inline_html(block.caption)}{pdf}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def inline_html(text: str) -> str:
    """``text`` HTML-escaped, with its ``code`` spans and ``[label](url)`` links as HTML."""
    parts, position = [], 0
    for match in INLINE_PATTERN.finditer(text):
        parts.append(html.escape(text[position : match.start()]))
        code, label, url = match.groups()
        if code is not None:
            parts.append(f"<code>{html.escape(code)}</code>")
        else:
            parts.append(f'<a href="{html.escape(url)}">{html.escape(label)}</a>')
        position = match.end()
    parts.append(html.escape(text[position:]))
    return "".join(parts)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of the frame's cells as text."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    separator = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = [
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, separator, *body])


def html_table(frame: pd.DataFrame) -> str:
    """An HTML table of the frame's cells as text (inline code and links rendered)."""
    head = "".join(f"<th>{inline_html(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{inline_html(str(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
