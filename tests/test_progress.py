"""Progress of the long stages: a bar on a terminal, plain lines in a log, none with --quiet."""

from __future__ import annotations

import io
import re

import pytest

from sing_audit import progress as progress_module
from sing_audit.cli import main
from sing_audit.progress import progress, progress_is_quiet, quiet_progress

PROGRESS_LINE = re.compile(r"^(extract|text|translator|probe|report)\b.*: \d+(/\d+)? \w+ \(")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_with_rate_and_time_left():
    stream = _Terminal()
    for _ in progress(range(3), desc="text clip", unit="prompt", stream=stream):
        pass
    text = stream.getvalue()
    assert "\r" in text and "text clip" in text and "prompt/s" in text and "<" in text  # elapsed<left


def test_a_log_gets_plain_lines_every_few_seconds(monkeypatch):
    stream = io.StringIO()
    with progress(total=4, desc="text clip", unit="prompt", stream=stream) as bar:
        bar.update(2)
    assert stream.getvalue() == "", "a stage shorter than the interval prints nothing"
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_SECONDS", 0.0)
    stream = io.StringIO()
    with progress(total=4, desc="text clip", unit="prompt", stream=stream) as bar:
        bar.update(2)
        bar.update(2)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert re.fullmatch(r"text clip: 2/4 prompt \(\S+ prompt/s, \d\d:\d\d left\)", lines[0]), lines
    assert re.fullmatch(r"text clip: 4/4 prompt \(done in \d\d:\d\d\)", lines[-1]), lines
    assert not progress_is_quiet()
    with quiet_progress():
        assert progress_is_quiet()  # what a component drawing its own bar (the MLP translators) asks
        stream = io.StringIO()
        for _ in progress(range(3), desc="x", stream=stream):
            pass
    assert stream.getvalue() == ""


@pytest.mark.parametrize("quiet", [False, True])
def test_a_run_outside_a_terminal_prints_plain_progress_unless_quiet(synthetic_config, capsys, monkeypatch, quiet):
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_SECONDS", 0.0)
    cfg = synthetic_config(report={"formats": ["json", "csv", "html"]})
    assert main(["run", *(["--quiet"] if quiet else []), str(cfg)]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "exit 1: the policy failed" in captured.out  # the verdict stays
    assert "\r" not in captured.err
    lines = [line for line in captured.err.splitlines() if PROGRESS_LINE.match(line)]
    if quiet:
        assert lines == [], captured.err
    else:
        stages = {line.split()[0].rstrip(":") for line in lines}
        assert {"translator", "probe", "report"} <= stages, captured.err
        assert not any(PROGRESS_LINE.match(line) for line in captured.out.splitlines())
