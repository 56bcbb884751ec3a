"""Plugins extend the command line (``register_commands``) and reporters take options
(``report.options``); publishers run after every writer; a missing extra exits 2."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from sing_audit.cli import main, plugin_commands
from sing_audit.errors import ConfigError
from sing_audit.extras import MissingExtraError, require

from .conftest import demo_config



def _install(tmp_path: Path, monkeypatch, body: str) -> str:
    """A distribution on sys.path whose entry point registers ``body``'s hooks."""
    module = f"sa_cmd_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(body), encoding="utf-8")
    info = tmp_path / "sing_audit_cmds-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sing-audit-cmds\nVersion: 0.3\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[sing_audit]\ncmds = {module}\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SING_AUDIT_LOAD_PLUGINS", raising=False)
    importlib.invalidate_caches()
    return module


GREETER = """
    from sing_audit import hookimpl
    from sing_audit.commands import Command
    from sing_audit.errors import BadInputError

    class Greet(Command):
        help = "greet someone"

        def add_arguments(self, parser):
            parser.add_argument("who")
            parser.add_argument("--fail", action="store_true")

        def run(self, args):
            if args.who == "nobody":
                raise BadInputError("there is nobody to greet")
            print(f"hello {args.who}")
            return 1 if args.fail else 0

    @hookimpl
    def register_commands(register):
        register("greet", Greet)
"""


def test_register_commands_adds_a_subcommand_with_its_exit_codes(tmp_path, monkeypatch, capsys):
    """A command registered through register_commands runs with its arguments and exit codes."""
    module = _install(tmp_path, monkeypatch, GREETER)
    try:
        assert main(["greet", "world"]) == 0
        assert "hello world" in capsys.readouterr().out
        assert main(["greet", "world", "--fail"]) == 1
        assert main(["greet", "nobody"]) == 2
        assert "there is nobody to greet" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            main(["--help"])
        assert "greet someone" in capsys.readouterr().out
    finally:
        sys.modules.pop(module, None)


def test_core_commands_parse_without_loading_plugins(tmp_path, monkeypatch):
    module = _install(tmp_path, monkeypatch, GREETER)
    assert plugin_commands(["run", "x.yaml"]) == {}
    assert plugin_commands(["--debug", "validate", "x.yaml"]) == {}
    assert module not in sys.modules  # not even imported
    assert set(plugin_commands(["greet", "x"])) >= {"greet"}
    sys.modules.pop(module, None)


def test_a_plugin_command_may_not_take_a_core_name(tmp_path, monkeypatch, capsys):
    module = _install(tmp_path, monkeypatch, GREETER.replace('register("greet", Greet)', 'register("run", Greet)'))
    try:
        assert main(["greet", "x"]) == 2
        err = capsys.readouterr().err
        assert "'run'" in err and "sing-audit's own" in err and "sing-audit-cmds 0.3" in err
    finally:
        sys.modules.pop(module, None)


def test_an_unknown_command_still_says_so(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# --------------------------------------------------------------------------- reporter options

RECORDER = """
    import json
    from pathlib import Path

    from sing_audit import hookimpl
    from sing_audit.components import PluginOptions, Reporter

    class Recorder(Reporter):
        formats = ("recorder",)
        publishes = True

        class Options(PluginOptions):
            label: str = "default"

        def __init__(self, options):
            self.options = options

        def write(self, result, output_dir, fmt):
            path = Path(output_dir) / "recorded.json"
            seen = {
                "label": self.options.label,
                "files": dict(result.files),
                "on_disk": sorted(p.name for p in Path(output_dir).iterdir() if p.is_file()),
                "results_json_files": json.loads((Path(output_dir) / "results.json").read_text())["files"],
            }
            path.write_text(json.dumps(seen))
            return [path]

    @hookimpl
    def register_reporters(register):
        register("recorder", Recorder)
"""


def _config(tmp_path: Path, report: dict) -> Path:
    return demo_config(tmp_path, report)


def test_a_publisher_runs_after_the_writers_with_its_options(tmp_path, monkeypatch):
    module = _install(tmp_path, monkeypatch, RECORDER)
    try:
        # listed first, it still runs last: after csv and markdown, after the final results.json
        config = _config(tmp_path, {"formats": ["recorder", "csv", "markdown"], "options": {"recorder": {"label": "x1"}}})
        assert main(["-q", "run", str(config)]) == 1
        seen = json.loads((tmp_path / "run" / "recorded.json").read_text())
        assert seen["label"] == "x1"
        assert {"csv", "markdown", "json"} <= set(seen["files"])
        assert {"classes.csv", "summary.md", "results.json"} <= set(seen["on_disk"])
        assert seen["results_json_files"]["markdown"] == "summary.md"
        final = json.loads((tmp_path / "run" / "results.json").read_text())
        assert final["files"]["recorder"] == "recorded.json"
        # `sing-audit report` re-renders it with the options recorded in results.json
        (tmp_path / "run" / "recorded.json").unlink()
        assert main(["-q", "report", str(tmp_path / "run"), "-f", "recorder"]) == 0
        assert json.loads((tmp_path / "run" / "recorded.json").read_text())["label"] == "x1"
    finally:
        sys.modules.pop(module, None)


@pytest.mark.parametrize(
    "report, message",
    [
        ({"formats": ["json"], "options": {"recordr": {}}}, "options for unknown format 'recordr'"),
        ({"formats": ["recorder"], "options": {"recorder": {"lable": "x"}}}, "lable"),
        ({"formats": ["csv"], "options": {"csv": {"x": 1}}}, "takes no options"),
        ({"formats": ["recorder"], "options": {"recorder": {"plugin": "csv"}}}, "'plugin' is not an option"),
    ],
)
def test_bad_reporter_options_are_config_errors(tmp_path, monkeypatch, capsys, report, message):
    module = _install(tmp_path, monkeypatch, RECORDER)
    try:
        config = _config(tmp_path, report)
        assert main(["validate", str(config)]) == 2
        err = capsys.readouterr().err
        assert message in err and "report.options" in err
        assert not (tmp_path / "run").exists()
    finally:
        sys.modules.pop(module, None)


# --------------------------------------------------------------------------- extras


def test_require_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(MissingExtraError) as exc:
        require("mlflow", extra="mlflow", feature="the mlflow reporter")
    message = str(exc.value)
    assert "the mlflow reporter needs the mlflow package" in message
    assert "pip install 'sing-audit[mlflow]'" in message
    assert exc.value.extra == "mlflow" and isinstance(exc.value, ConfigError.__mro__[1])  # a BadInputError: exit 2
    assert require("json", extra="x", feature="y") is json


NEEDS_EXTRA = """
    from sing_audit import hookimpl
    from sing_audit.components import Reporter
    from sing_audit.extras import require

    class Tracker(Reporter):
        formats = ("tracker",)
        publishes = True

        def __init__(self):
            require("sa_no_such_tracker_lib", extra="tracker", feature="the tracker reporter")

        def write(self, result, output_dir, fmt):
            return []

    @hookimpl
    def register_reporters(register):
        register("tracker", Tracker)
"""


def test_a_reporter_without_its_extra_exits_2_before_the_audit_naming_the_extra(tmp_path, monkeypatch, capsys):
    module = _install(tmp_path, monkeypatch, NEEDS_EXTRA)
    try:
        config = _config(tmp_path, {"formats": ["json", "tracker"]})
        for command in ("validate", "run"):
            assert main(["-q", command, str(config)]) == 2
            err = capsys.readouterr().err
            assert "report.formats: tracker: the tracker reporter needs the sa_no_such_tracker_lib package" in err
            assert "pip install 'sing-audit[tracker]'" in err
        assert not (tmp_path / "run" / "results.json").exists()  # refused before anything ran
    finally:
        sys.modules.pop(module, None)


FAILING = """
    from sing_audit import hookimpl
    from sing_audit.components import Reporter
    from sing_audit.errors import BadInputError

    class Broken(Reporter):
        formats = ("broken",)

        def write(self, result, output_dir, fmt):
            raise BadInputError("the tracker said no-such-project-4711")

    @hookimpl
    def register_reporters(register):
        register("broken", Broken)
"""


def test_a_failing_reporter_is_reported_once_on_the_terminal(tmp_path, monkeypatch, capsys):
    module = _install(tmp_path, monkeypatch, FAILING)
    try:
        config = _config(tmp_path, {"formats": ["json", "broken"]})
        assert main(["-q", "run", str(config)]) == 2
        err = capsys.readouterr().err
        assert err.count("no-such-project-4711") == 1, err
        assert "sing-audit report" in err and "Traceback" not in err
        log = (tmp_path / "run" / "logs" / "run.log").read_text(encoding="utf-8")
        assert "no-such-project-4711" in log and "Traceback" in log  # the run log keeps everything
    finally:
        sys.modules.pop(module, None)


def test_plugins_lists_a_command_with_its_help_line(tmp_path, monkeypatch, capsys):
    module = _install(tmp_path, monkeypatch, GREETER)
    try:
        assert main(["plugins", "--json"]) == 0
        listed = {(p["kind"], p["name"]): p for p in json.loads(capsys.readouterr().out)}
        assert listed[("command", "greet")]["doc"] == "greet someone"
        assert "sing-audit-cmds 0.3" in listed[("command", "greet")]["package"]
        assert all(listed[("command", name)]["doc"] for name in ("attest", "keygen", "verify", "export"))
    finally:
        sys.modules.pop(module, None)


def test_environment_sets_variables_for_the_block_and_puts_every_one_back(monkeypatch):
    import os

    from sing_audit.extras import environment

    monkeypatch.setenv("SA_ENV_KEPT", "before")
    monkeypatch.delenv("SA_ENV_NEW", raising=False)
    with pytest.raises(RuntimeError), environment({"SA_ENV_KEPT": "during", "SA_ENV_NEW": "x"}):
        assert os.environ["SA_ENV_KEPT"] == "during" and os.environ["SA_ENV_NEW"] == "x"
        raise RuntimeError("the block fails")
    assert os.environ["SA_ENV_KEPT"] == "before" and "SA_ENV_NEW" not in os.environ
