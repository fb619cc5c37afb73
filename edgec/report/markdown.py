"""report.json as GitHub-flavoured Markdown (tables, no plots): for pull-request comments."""

from __future__ import annotations

from edgec.report.sections import Section, sections

__all__ = ["render"]

MAX_ROWS = 15  # long tables (kernels) are cut in a PR comment; report.html has them all


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section(s: Section) -> list[str]:
    out = [f"### {s.title}", ""]
    for k, v in s.pairs:
        out.append(f"- **{_escape(k)}**: {_escape(v)}")
    if s.pairs:
        out.append("")
    if s.note and s.id != "gates":
        out += [_escape(s.note), ""]
    if s.rows:
        out.append("| " + " | ".join(_escape(h) for h in s.headers) + " |")
        out.append("|" + "---|" * len(s.headers))
        for row in s.rows[:MAX_ROWS]:
            out.append("| " + " | ".join(_escape(c) for c in row) + " |")
        if len(s.rows) > MAX_ROWS:
            out.append(f"\n({len(s.rows) - MAX_ROWS} more rows in report.html)")
        out.append("")
    return out


def render(report: dict) -> str:
    lines = [f"## edgec: {report.get('model', 'model')} -> {report.get('target', '?')}", ""]
    for s in sections(report):
        if s.id != "timings":
            lines += _section(s)
    return "\n".join(lines).rstrip() + "\n"
