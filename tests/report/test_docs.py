"""docs/ci.md's workflow uses only flags that exist (it is not run here: it needs GitHub)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "ci.md"


def test_workflow_commands_use_existing_flags(cli):
    text = DOC.read_text()
    workflow = text[text.index("```yaml") : text.index("```", text.index("```yaml") + 3)]
    # join continuation lines, expand $GATES with every gate flag it is assigned
    workflow = workflow.replace("\\\n", " ")
    gates = " ".join(re.findall(r'GATES="([^"]*)"', workflow))
    commands = [line.split("edgec ", 1)[1] for line in workflow.splitlines() if "edgec " in line
                and not line.strip().startswith(("name:", "-"))]  # fmt: skip
    assert {c.split()[0] for c in commands} == {"check", "compile", "diff", "report"}
    for command in commands:
        name = command.split()[0]
        if name == "compile":
            command += " " + gates
        used = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", command))
        help_text = cli(name, "--help").out
        missing = {flag for flag in used if flag not in help_text}
        assert not missing, f"edgec {name}: {missing} not in --help"
