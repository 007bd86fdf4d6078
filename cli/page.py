"""Self-contained HTML pages: the machinery of the build report (`qfab.report`) and the sweep report.

A page is a title and a list of `Section` objects rendered by `render_page` into one HTML file
that needs nothing else: the style sheet is inline, plots are PNGs embedded as base64 (`figure`),
and there is no script. The helpers build a section's body: `table`, `bar`, `badge`, `missing`,
`paragraph`, `code`. Text is escaped everywhere; `Html` marks a string that already is HTML.

    from qfab.page import Section, render_page, table, write_page
    page = render_page("sweep out/", [Section("points", "Points", table(["bits", "accuracy"], rows))])
    write_page("out/report.html", page)
"""

from __future__ import annotations

import base64
import html
import io
import os
import pathlib
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Html", "Section", "render_page", "write_page", "esc", "table", "figure", "bar", "badge", "missing",
           "paragraph", "code", "details"]


class Html(str):
    """A string that is already HTML (not escaped again)."""


def esc(value) -> Html:
    """``value`` as HTML: `Html` unchanged, anything else as escaped text (floats to 4 digits)."""
    if isinstance(value, Html):
        return value
    if isinstance(value, float):
        value = f"{value:.4g}"
    return Html(html.escape("" if value is None else str(value)))


@dataclass(frozen=True)
class Section:
    """One section of a page: ``key`` is its anchor (``#key``, also the ``id`` tests look for),
    ``title`` its heading, ``body`` its content (`Html`)."""
    key: str
    title: str
    body: str

    def __post_init__(self):
        if not self.key.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"section key must be letters, digits, - and _, not {self.key!r}")


STYLE = """
:root { --fg: #1d2329; --muted: #66707a; --line: #d8dde2; --bg: #f6f8fa; --ok: #1a7f37; --bad: #cf222e;
        --warn: #9a6700; --accent: #0969da; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
       margin: 0; background: #fff; }
header { background: var(--bg); border-bottom: 1px solid var(--line); padding: 18px 32px 10px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 2px 0; color: var(--muted); }
nav { margin-top: 10px; display: flex; flex-wrap: wrap; gap: 6px 16px; }
nav a { color: var(--accent); text-decoration: none; }
main { padding: 8px 32px 40px; max-width: 1200px; }
section { border-bottom: 1px solid var(--line); padding: 6px 0 18px; }
h2 { font-size: 18px; margin: 18px 0 8px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
td.num { text-align: right; }
td:has(.bar) { white-space: nowrap; }
tr.total td { font-weight: 600; background: #fbfcfd; }
.missing { color: var(--muted); font-style: italic; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-weight: 600; font-size: 12px;
         color: #fff; background: var(--muted); }
.badge.ok { background: var(--ok); } .badge.bad { background: var(--bad); } .badge.warn { background: var(--warn); }
.bar { display: inline-block; width: 80px; height: 10px; background: #eaeef2; border-radius: 2px;
       vertical-align: middle; margin-right: 6px; position: relative; overflow: hidden; }
.bar span { display: block; height: 100%; background: var(--accent); }
.bar span.over { background: var(--bad); }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
pre { background: var(--bg); border: 1px solid var(--line); padding: 8px 10px; overflow-x: auto;
      white-space: pre-wrap; }
img { max-width: 100%; height: auto; border: 1px solid var(--line); }
footer { color: var(--muted); padding: 0 32px 24px; font-size: 12px; }
"""


def render_page(title: str, sections: Sequence[Section], *, subtitle: Iterable[str] = (),
                footer: str = "") -> str:
    """The whole page: a header with ``title``, the ``subtitle`` lines and a link to each section,
    then the sections in order."""
    keys = [s.key for s in sections]
    if len(set(keys)) != len(keys):
        raise ValueError(f"section keys must be distinct, not {keys}")
    nav = "".join(f'<a href="#{esc(s.key)}">{esc(s.title)}</a>' for s in sections)
    head = "".join(f"<p>{esc(line)}</p>" for line in subtitle)
    body = "\n".join(f'<section id="{esc(s.key)}">\n<h2>{esc(s.title)}</h2>\n{s.body}\n</section>' for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<header>\n<h1>{esc(title)}</h1>\n{head}\n<nav>{nav}</nav>\n</header>\n"
            f"<main>\n{body}\n</main>\n<footer>{esc(footer)}</footer>\n</body>\n</html>\n")


def write_page(path: str | os.PathLike, page: str) -> pathlib.Path:
    """Write ``page`` at ``path`` through a temporary file, so a reader never sees half a page."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.absolute().parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def table(header: Sequence | None, rows: Iterable[Sequence], *, total: Sequence | None = None) -> Html:
    """A table; numbers (int, float) are right-aligned, ``total`` is a last row in bold; no
    ``header`` (None): a table of names and values."""
    def cells(row, tag="td"):
        out = []
        for value in row:
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
            out.append(f'<{tag}{" class=num" if numeric and tag == "td" else ""}>{esc(text)}</{tag}>')
        return "".join(out)
    body = [f"<tr>{cells(row)}</tr>" for row in rows]
    if total is not None:
        body.append(f'<tr class="total">{cells(total)}</tr>')
    head = f"<thead><tr>{cells(header, 'th')}</tr></thead>\n" if header is not None else ""
    return Html(f"<table>\n{head}<tbody>\n" + "\n".join(body)
                + "\n</tbody>\n</table>")


def figure(fig, alt: str, *, dpi: int = 100) -> Html:
    """A matplotlib ``Figure`` as an embedded PNG image."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return Html(f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">')


def bar(share: float, text: str | None = None) -> Html:
    """A small horizontal bar filled to ``share`` (0 to 1; red beyond 1), then ``text`` (default:
    the share in per cent)."""
    width = max(0.0, min(share, 1.0)) * 100
    over = " class=over" if share > 1 else ""
    label = f"{100 * share:.1f}%" if text is None else text
    return Html(f'<span class="bar"><span{over} style="width:{width:.1f}%"></span></span>{esc(label)}')


def badge(text: str, kind: str = "") -> Html:
    """A coloured label: ``kind`` ``"ok"`` (green), ``"bad"`` (red), ``"warn"`` or ``""`` (grey)."""
    return Html(f'<span class="badge {esc(kind)}">{esc(text)}</span>')


def missing(text: str) -> Html:
    """The one line a section shows when there is no data for it."""
    return Html(f'<p class="missing">{esc(text)}</p>')


def paragraph(*parts) -> Html:
    """A paragraph of text and `Html` parts."""
    return Html("<p>" + "".join(esc(p) for p in parts) + "</p>")


def code(text: str) -> Html:
    return Html(f"<code>{esc(text)}</code>")


def details(summary: str, body: str) -> Html:
    """A collapsed block the reader can open."""
    return Html(f"<details><summary>{esc(summary)}</summary>\n{body}\n</details>")
