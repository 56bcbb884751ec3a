"""What the terminal shows: global flags in either position, no raw log lines, plain
plugin descriptions, the files a run wrote."""

from __future__ import annotations

import pytest

from sing_audit.cli import build_parser, main


# --------------------------------------------------------------------------- global flags


@pytest.mark.parametrize("command", [["run", "audit.yaml"], ["merge", "audit.yaml"], ["validate", "audit.yaml"],
                                     ["schema"], ["plugins"], ["report", "out"], ["diff", "a", "b"],
                                     ["explain", "img", "--config", "audit.yaml"]])
def test_global_flags_work_before_and_after_the_command(command):
    parser = build_parser()
    assert parser.parse_args(command).debug is False
    assert parser.parse_args(["--debug", *command]).debug is True
    assert parser.parse_args([command[0], "--debug", *command[1:]]).debug is True
    assert parser.parse_args([*command, "--debug"]).debug is True


def test_debug_after_the_subcommand_shows_the_traceback(synthetic_config, capsys):
    cfg = synthetic_config(policy={"min_images": 0})
    assert main(["run", "--debug", str(cfg)]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main(["run", str(cfg), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
