"""Ctrl-C (issue #11): the log and the terminal name the interrupted stage, the terminal
says how to resume, and chunked stages (extraction, text encoding) keep finished chunks."""

from __future__ import annotations

import logging

import pytest

from sing_audit.config import load_config
from sing_audit.host import create_registry
from sing_audit.runner import Runner, build_plan


def _runner(synthetic_config) -> Runner:
    cfg = load_config(synthetic_config())
    return Runner(build_plan(cfg, create_registry(), "test"))


# --------------------------------------------------------------------------- stages


def test_stage_log_says_finished_interrupted_or_failed(synthetic_config, caplog):
    from sing_audit.stages import stage_exit

    runner = _runner(synthetic_config)
    caplog.set_level(logging.INFO, logger="sing_audit")
    with runner.stage("dataset"):
        pass
    with pytest.raises(KeyboardInterrupt) as interrupted:
        with runner.stage("text"):
            raise KeyboardInterrupt
    with pytest.raises(ValueError) as failed:
        with runner.stage("translator"):
            raise ValueError("bad")
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("stage dataset: ") and line.endswith("s") and "after" not in line for line in lines)
    assert any(line.startswith("stage text: interrupted after ") for line in lines), lines
    assert any(line.startswith("stage translator: failed after ") and line.endswith("s (ValueError)") for line in lines), lines
    # an unfinished stage is not counted as if it had finished
    assert set(runner.stage_seconds) == {"dataset"}
    assert stage_exit(interrupted.value).name == "text"
    assert stage_exit(failed.value).name == "translator"


def test_nested_stages_name_the_innermost(synthetic_config, caplog):
    from sing_audit.stages import stage_exit

    runner = _runner(synthetic_config)
    caplog.set_level(logging.INFO, logger="sing_audit")
    with pytest.raises(KeyboardInterrupt) as info:
        with runner.stage("probes"):
            with runner.stage("text"):
                raise KeyboardInterrupt
    where = stage_exit(info.value)
    assert where.name == "text" and where.outer == ("probes",)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("stage probes: interrupted after ") for line in lines)
