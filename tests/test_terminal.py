"""Untrusted strings stay inert on the terminal; every output carries the random-weights stamp."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from sing_audit.terminal import plain, shorten

from .conftest import write_config

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\u202esports car"


def _hostile_demo(tmp_path, scenario_dir, **backbone_options):
    """The synthetic demo with a planted class renamed to carry terminal escape sequences."""
    with np.load(scenario_dir / "leaky.npz") as data:
        arrays = dict(data)
    names = [str(n) for n in arrays["class_names"]]
    names[names.index("sports car")] = HOSTILE
    arrays["class_names"] = np.array(names)
    np.savez(tmp_path / "leaky.npz", **arrays)
    return write_config(
        tmp_path,
        {
            "output": "out",
            "target": {"plugin": "precomputed", "name": "clip", "path": str(scenario_dir / "clip.npz")},
            "backbones": [{"name": "leaky", "plugin": "precomputed", "path": "leaky.npz", **backbone_options}],
            "report": {"formats": ["json", "csv"]},
            "run": {"bootstrap": 200},
        },
    )


def test_a_hostile_class_name_cannot_drive_the_terminal(tmp_path, scenario_dir):
    cfg = _hostile_demo(tmp_path, scenario_dir)
    proc = subprocess.run([sys.executable, "-m", "sing_audit", "run", str(cfg)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    for stream in (proc.stdout, proc.stderr):
        assert "\x1b" not in stream and "\x07" not in stream and "\u202e" not in stream
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\u202esports car" in proc.stdout  # shown, escaped, in the verdict
    # results.json keeps the name as it is
    res = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert HOSTILE in res["models"][0]["flagged_classes"]


def test_error_messages_are_sanitised_too(tmp_path):
    cfg = tmp_path / "\x1b[2Jaudit.yaml"
    proc = subprocess.run([sys.executable, "-m", "sing_audit", "run", str(cfg)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "\x1b" not in proc.stderr and "\\x1b[2Jaudit.yaml" in proc.stderr


@given(st.text())
def test_plain_leaves_only_printable_characters(text):
    out = plain(text)
    assert all(c.isprintable() or c == "\n" for c in out)
    assert plain(text, keep_newlines=False).count("\n") == 0
    if all(c.isprintable() for c in text):
        assert out == text


@given(st.text(), st.integers(2, 200))
def test_shorten_bounds_length(text, limit):
    out = shorten(text, limit)
    assert len(out) <= max(limit, 1) and (out == text) == (len(text) <= limit)


def test_csv_outputs_carry_the_random_weights_stamp(tmp_path, scenario_dir):
    cfg = _hostile_demo(tmp_path, scenario_dir, random_weights=True)
    proc = subprocess.run([sys.executable, "-m", "sing_audit", "run", str(cfg)], capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    out = tmp_path / "out"
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert res["random_weights"] is True
    for path in (out / "classes.csv", out / res["models"][0]["files"]["images_csv"]):
        rows = list(csv.DictReader(path.open(encoding="utf-8")))
        assert rows and all(r["random_weights"] == "RANDOM WEIGHTS" for r in rows), path
