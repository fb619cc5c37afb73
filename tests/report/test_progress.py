"""Progress on stderr: plain lines off a terminal, a live spinner on one, nothing when quiet."""

from __future__ import annotations

import io

from edgec.api import _Steps
from edgec.progress import Progress


def test_plain_lines_off_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream=stream)
    assert not progress.live
    steps = _Steps(progress)
    with steps("build", "build for x86_64"):
        progress("a message")
    lines = stream.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines][:2] == ["build for x86_64 ...", "a message"]
    assert lines[2].split("] ", 1)[1].startswith("build for x86_64: done in ")
    assert set(steps.seconds) == {"build"}


def test_live_spinner_on_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream=stream, live=True)
    with _Steps(progress)("verify", "verify against onnxruntime"):
        progress("inside")
    text = stream.getvalue()
    assert "\x1b[" in text  # terminal control sequences of the live display
    assert "verify against onnxruntime: done in" in text and "inside" in text
    assert progress._bar is None  # the live display is closed after the step


def test_quiet_prints_nothing():
    stream = io.StringIO()
    progress = Progress(quiet=True, stream=stream)
    with _Steps(progress)("x", "something"):
        progress("hidden")
    assert stream.getvalue() == ""
