"""A report as a list of blocks, rendered twice from the same data: markdown and a self-contained HTML page
(tables as text, plots as inline SVG)."""

from __future__ import annotations

import html
import io
from typing import Any

import matplotlib
from matplotlib.figure import Figure

PAGE_STYLE = "body{font-family:sans-serif;max-width:1100px;margin:0 auto;padding:0 1em}"
TABLE_ATTRS = "border='1' cellpadding='4' style='border-collapse:collapse;margin:8px 0'"

Block = tuple[str, Any]  # (kind, content): h1, h2, h3, p (lines), table (header, rows), plot (title, Figure), md


def svg(fig: Figure, salt: str) -> str:
    """The figure as an inline <svg> element as wide as the page (no XML prolog; ids derived from `salt`)."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :].replace("<svg ", '<svg style="width:100%;height:auto" ', 1)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    def row(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

    return f"<table {TABLE_ATTRS}>" + row(header, "th") + "".join(row(r, "td") for r in rows) + "</table>"


def _plot_html(title: str, fig: Figure) -> str:
    return f"<h3>{html.escape(title)}</h3>\n<div>{svg(fig, title)}</div>"


MARKDOWN = {
    "h1": lambda text: f"# {text}",
    "h2": lambda text: f"## {text}",
    "h3": lambda text: f"### {text}",
    "p": "\n".join,
    "table": lambda table: md_table(*table),
    "md": str,  # markdown only
}
HTML = {
    "h1": lambda text: f"<h1>{html.escape(text)}</h1>",
    "h2": lambda text: f"<h2>{html.escape(text)}</h2>",
    "h3": lambda text: f"<h3>{html.escape(text)}</h3>",
    "p": lambda lines: "<p>" + "<br>\n".join(html.escape(line) for line in lines) + "</p>",
    "table": lambda table: _html_table(*table),
    "plot": lambda plot: _plot_html(*plot),
}


def paragraph(*lines: str) -> Block:
    return "p", list(lines)


def to_markdown(blocks: list[Block]) -> str:
    return "\n\n".join(MARKDOWN[kind](content) for kind, content in blocks if kind in MARKDOWN) + "\n"


def to_html(blocks: list[Block]) -> str:
    return "\n".join(HTML[kind](content) for kind, content in blocks if kind in HTML)



def html_page(title: str, blocks: list[Block]) -> str:
    """A self-contained HTML page of `blocks`."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{PAGE_STYLE}</style></head><body>\n{to_html(blocks)}\n</body></html>"
    )
