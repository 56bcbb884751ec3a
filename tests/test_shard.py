"""Sharded extraction: job arrays with --shard + merge, and torchrun.

The merged run must give the same results.json as one process: shards are whole
batches, so each image meets the same batch (and bit-identical features) either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sing_audit.cli import main
from sing_audit.errors import ConfigError
from sing_audit.pipeline.shard import Shard, parse_shard, shard_from_env
from sing_audit.synthetic import write_image_folder

from .conftest import image_folder_audit, write_config

BACKBONES = [{"name": "rn", "plugin": "timm", "model": "resnet18", "weights": "random", "img_size": 32}]
RUN = {"device": "cpu", "folds": 2, "bootstrap": 100, "batch_size": 4}
VOLATILE = ("started", "finished", "stage_seconds", "config_dir")  # config_dir: where each config file lies


def comparable(run_dir: Path) -> dict:
    data = json.loads((run_dir / "results.json").read_text())
    for key in VOLATILE:
        data["provenance"].pop(key, None)
    return data


def features(run_dir: Path) -> np.ndarray:
    (entry,) = [p for p in (run_dir / "cache" / "features").iterdir() if not p.name.startswith(".")]
    return np.load(entry / "values.npy")


# --------------------------------------------------------------------------- the slice


@given(st.integers(0, 500), st.integers(1, 64), st.integers(1, 12))
def test_shards_tile_the_rows_in_whole_batches(n, batch, count):
    spans = [Shard(i, count).rows(n, batch) for i in range(count)]
    assert [r for s in spans for r in s] == list(range(n))  # disjoint, in order, complete
    for s in spans:
        assert s.start % batch == 0  # every shard starts on a batch boundary
    sizes = [len(s) for s in spans]
    assert max(sizes) - min(sizes) <= batch or n < batch * count  # balanced to one batch


@pytest.mark.parametrize("spec", ["2/2", "-1/2", "a/b", "1", "0/0", "1/2/3"])
def test_bad_shard_specs_are_refused(spec):
    with pytest.raises(ConfigError, match="shard"):
        parse_shard(spec)


def test_shard_from_torchrun_environment():
    assert shard_from_env({}) is None
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    s = shard_from_env({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"})
    assert (s.index, s.count, s.local_rank, s.distributed) == (1, 3, 1, True)
    with pytest.raises(ConfigError):
        shard_from_env({"RANK": "x", "WORLD_SIZE": "2"})


# --------------------------------------------------------------------------- job arrays


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("shard-images") / "val", per_class=5, size=32)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, image_root):
    tmp = tmp_path_factory.mktemp("single")
    cfg = image_folder_audit(tmp, BACKBONES, root=image_root, run=RUN, per_class=5)
    code = main(["run", str(cfg)])
    assert code in (0, 1)
    return code, tmp / "out"


def test_shards_then_merge_equal_one_process(tmp_path, image_root, single_run, capsys):
    cfg = image_folder_audit(tmp_path, BACKBONES, root=image_root, run=RUN, per_class=5)
    for i in range(3):  # 15 images in batches of 4: shards of 1, 1 and 2 batches
        assert main(["run", str(cfg), "--shard", f"{i}/3"]) == 0
    assert "sing-audit merge" in capsys.readouterr().out
    assert not (tmp_path / "out" / "results.json").exists()  # shards analyse nothing
    code, single = single_run
    assert main(["merge", str(cfg)]) == code
    np.testing.assert_array_equal(features(tmp_path / "out"), features(single))
    assert comparable(tmp_path / "out") == comparable(single)
    assert not any((tmp_path / "out" / "cache" / "features-shards").iterdir())  # shards removed after the merge


@pytest.mark.slow
def test_image_target_embeddings_are_sharded_too(tmp_path, image_root):
    import open_clip

    from .test_image_audit import TINY_CLIP

    path = tmp_path / "sing-shard-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(path)
    runs = {}
    for mode in ("single", "sharded"):
        base = tmp_path / mode
        base.mkdir()
        cfg = write_config(base, {
            "output": "out",
            "dataset": {"plugin": "image_folder", "root": str(image_root)},
            "target": {"plugin": "open_clip", "name": "clip", "model": "sing-shard-clip", "weights": "random"},
            "backbones": BACKBONES,
            "run": RUN,
        })
        if mode == "sharded":
            for i in range(2):
                assert main(["run", str(cfg), "--shard", f"{i}/2"]) == 0
            assert len(list((base / "out" / "cache" / "embeddings-shards").iterdir())) == 2
            runs[mode] = main(["merge", str(cfg)]), comparable(base / "out")
        else:
            runs[mode] = main(["run", str(cfg)]), comparable(base / "out")
    assert runs["single"] == runs["sharded"]


def test_more_shards_than_batches(tmp_path, image_root, single_run):
    cfg = image_folder_audit(tmp_path, BACKBONES, root=image_root, run={**RUN, "batch_size": 8}, per_class=5)
    for i in range(3):  # 2 batches, 3 shards: one is empty and still counts as done
        assert main(["run", str(cfg), "--shard", f"{i}/3"]) == 0
    code, single = single_run
    assert main(["merge", str(cfg)]) == code
    assert comparable(tmp_path / "out")["models"] == comparable(single)["models"]


def test_merge_names_the_missing_shard(tmp_path, image_root, capsys):
    cfg = image_folder_audit(tmp_path, BACKBONES, root=image_root, run=RUN, per_class=5)
    assert main(["merge", str(cfg)]) == 2
    assert "no shard was extracted" in capsys.readouterr().err
    assert main(["run", str(cfg), "--shard", "1/3"]) == 0
    assert main(["merge", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "shard(s) 0/3, 2/3 not finished" in err and "--shard 0/3" in err


def test_bad_shard_option_exits_2(tmp_path, image_root, capsys):
    cfg = image_folder_audit(tmp_path, BACKBONES, root=image_root, run=RUN, per_class=5)
    assert main(["run", str(cfg), "--shard", "3/3"]) == 2
    assert "0-based" in capsys.readouterr().err


def test_plain_run_joins_complete_shards_without_extracting(tmp_path, image_root, single_run, monkeypatch):
    cfg = image_folder_audit(tmp_path, BACKBONES, root=image_root, run=RUN, per_class=5)
    for i in range(2):
        assert main(["run", str(cfg), "--shard", f"{i}/2"]) == 0
    from sing_audit_timm.backbone import TimmBackbone

    monkeypatch.setattr(TimmBackbone, "load", lambda self, device: pytest.fail("extracted again"))
    code, single = single_run
    assert main(["run", str(cfg)]) == code
    assert comparable(tmp_path / "out") == comparable(single)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return env


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, image_root):
    """The reference for the multi-process tests: one process with their environment
    (torchrun sets OMP_NUM_THREADS=1, and BLAS sums depend on the thread count)."""
    tmp = tmp_path_factory.mktemp("single-process")
    cfg = image_folder_audit(tmp, BACKBONES, root=image_root, run=RUN, per_class=5)
    proc = subprocess.run([sys.executable, "-m", "sing_audit", "run", str(cfg)], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, tmp / "out"


@pytest.mark.slow
def test_two_shard_processes_at_once_then_merge(tmp_path, image_root, single_process):
    cfg = image_folder_audit(tmp_path, BACKBONES, root=image_root, run=RUN, per_class=5)
    procs = [
        subprocess.Popen([sys.executable, "-m", "sing_audit", "run", str(cfg), "--shard", f"{i}/2"], env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    code, single = single_process
    merged = subprocess.run([sys.executable, "-m", "sing_audit", "merge", str(cfg)], env=_env(), capture_output=True,
                            text=True, timeout=600)
    assert merged.returncode == code, merged.stderr
    np.testing.assert_array_equal(features(tmp_path / "out"), features(single))
    assert comparable(tmp_path / "out") == comparable(single)


@pytest.mark.slow
def test_torchrun_two_ranks_with_gloo(tmp_path, image_root, single_process):
    cfg = image_folder_audit(tmp_path, BACKBONES, root=image_root, run=RUN, per_class=5)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sing_audit",
         "run", str(cfg)],
        env=_env(), capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    code, single = single_process
    logs = sorted(p.name for p in (tmp_path / "out" / "logs").iterdir())
    assert logs == ["run.log", "shard-0-of-2.log", "shard-1-of-2.log"], proc.stderr
    np.testing.assert_array_equal(features(tmp_path / "out"), features(single))
    assert comparable(tmp_path / "out") == comparable(single), proc.stderr
    # torchrun passes on a worker's exit code: rank 0 exits like `run` (1 when the policy fails)
    assert (proc.returncode == 0) == (code == 0), proc.stderr


def test_precomputed_inputs_have_nothing_to_shard(synthetic_config, capsys):
    cfg = synthetic_config()
    assert main(["run", str(cfg), "--shard", "0/2"]) == 0
    assert "nothing (every input is precomputed)" in capsys.readouterr().out
    assert main(["merge", str(cfg)]) == 1  # nothing to join: the analysis runs as `run` would (the demo fails)
