"""``report.html``: report.json as one self-contained page (inline CSS and SVG plots, no scripts,
nothing fetched from the network), written next to report.json by every compile."""

from __future__ import annotations

import html
from pathlib import Path

from edgec.report import plots
from edgec.report.sections import Section, sections

__all__ = ["FILE", "render", "write"]

FILE = "report.html"

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 1.2em; }
dt { font-weight: 600; } dd { margin: 0; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
.FAIL { color: #b00; font-weight: 600; } .PASS { color: #070; }
p.note { color: #555; font-size: 12px; white-space: pre-wrap; }
"""

PLOTS = {
    "latency": plots.latency,
    "kernels": plots.kernels,
    "roofline": plots.roofline,
    "efficiency": plots.efficiency,
}


def _cell(text: str) -> str:
    cls = text if text in ("PASS", "FAIL") else "num" if _numeric(text) else ""
    return f'<td class="{cls}">{html.escape(text)}</td>' if cls else f"<td>{html.escape(text)}</td>"


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip("%"))
    except ValueError:
        return False
    return True


def _section(s: Section, report: dict) -> str:
    out = [f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>']
    if s.pairs:
        out.append("<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                    for k, v in s.pairs) + "</dl>")  # fmt: skip
    if s.note:
        out.append(f'<p class="note">{html.escape(s.note)}</p>')
    for name in s.plots:
        svg = PLOTS[name](report)
        if svg:
            out.append(f'<figure id="plot-{name}" class="plot">{svg}</figure>')
    if s.rows:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in s.headers)
        body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in s.rows)
        out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    out.append("</section>")
    return "\n".join(out)


def render(report: dict) -> str:
    title = f"edgec report: {report.get('model', 'model')} -> {report.get('target', '?')}"
    body = "\n".join(_section(s, report) for s in sections(report))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def write(report: dict, path: Path) -> None:
    path.write_text(render(report), encoding="utf-8")
