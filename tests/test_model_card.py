"""``sing-audit export model-card``: a model card section whose ``model-index`` metadata
huggingface_hub reads back to the run's numbers, its Markdown sections, and its errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from sing_audit.cli import main
from sing_audit.compare import load_result

hub = pytest.importorskip("huggingface_hub", reason="the model-card extra (huggingface_hub) is not installed")

DEMO = Path(__file__).resolve().parents[1] / "examples" / "synthetic" / "audit.yaml"
DATASET = ["--dataset-name", "Synthetic demo", "--dataset-type", "synthetic"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["-q", "run", str(DEMO), "-o", f"output={out}", "-o", "report.formats=[json]"]) == 1
    return out


@pytest.fixture
def copy(run, tmp_path) -> Path:
    """A copy of the run's results.json in a folder of its own (to edit or corrupt)."""
    folder = tmp_path / "copy"
    folder.mkdir()
    shutil.copy(run / "results.json", folder / "results.json")
    return folder


def _export(*args: str) -> int:
    return main(["export", "model-card", *args])


def test_the_card_parses_back_to_the_runs_numbers(run, tmp_path, capsys):
    card_path = tmp_path / "card.md"
    assert _export(str(run), "--model", "leaky", *DATASET, "-o", str(card_path)) == 0
    assert str(card_path) in capsys.readouterr().out
    card = hub.ModelCard.load(card_path)
    assert card.data.model_name == "leaky"
    results = {(e.metric_type, e.metric_config): e for e in card.data.eval_results}
    leaky = load_result(run)[0].model("leaky", "clip")
    expected = {
        "sing-audit/null-dim": (leaky.null_dim, None),
        "sing-audit/mean-is": (leaky.is_mean, leaky.is_ci),
        "sing-audit/mean-abs-as": (leaky.as_abs_mean, leaky.as_abs_ci),
        "sing-audit/is-as-ratio": (leaky.is_as_ratio, leaky.is_as_ratio_ci),
        "sing-audit/flagged-classes": (2, None),
        "sing-audit/judged-classes": (10, None),
    }
    assert set(results) == {(k, "clip") for k in expected}
    for metric, (value, ci) in expected.items():
        e = results[(metric, "clip")]
        assert e.metric_value == pytest.approx(value, rel=1e-12)
        assert (e.task_type, e.dataset_name, e.dataset_type) == ("image-classification", "Synthetic demo", "synthetic")
        if ci is not None:
            assert e.metric_args["ci95"] == pytest.approx([ci.low, ci.high], rel=1e-12)


def test_the_markdown_has_its_sections(run, tmp_path):
    card_path = tmp_path / "card.md"
    assert _export(str(run), "--model", "leaky@clip", *DATASET, "-o", str(card_path)) == 0
    text = hub.ModelCard.load(card_path).text
    for heading in ("## Null-space audit (sing-audit)", "### Summary", "### Results", "### Flagged classes", "### Method", "### Provenance"):
        assert heading in text
    assert "**Verdict: FAIL**" in text
    assert "| clip | 54 (rank) | 6.35° | 3.66° [3.10–4.25°] | 1.73 [1.60, 1.88] | 2 of 10 |" in text
    assert "| clip | 5 | sports car | 17.80° | 17.40–18.15° | 60 | flagged |" in text
    summary = text.split("### Summary", 1)[1].split("###", 1)[0]
    assert "http" not in summary and "](" not in summary and "leaky" in summary and "2 of 10 judged" in summary
    assert "RANDOM WEIGHTS" not in text


def test_default_output_is_in_the_run_folder_and_reruns_overwrite_it(run, capsys):
    assert _export(str(run), "--model", "benign", *DATASET) == 0
    assert _export(str(run), "--model", "leaky", *DATASET) == 0  # ours: overwritten without --force
    card = hub.ModelCard.load(run / "model-card.md")
    assert card.data.model_name == "leaky"
    (run / "model-card.md").unlink()


def test_a_file_that_is_not_ours_is_kept_unless_force(run, tmp_path, capsys):
    target = tmp_path / "README.md"
    target.write_text("# my hand-written card\n", encoding="utf-8")
    assert _export(str(run), "--model", "leaky", *DATASET, "-o", str(target)) == 2
    assert "--force" in capsys.readouterr().err
    assert target.read_text(encoding="utf-8") == "# my hand-written card\n"
    assert _export(str(run), "--model", "leaky", *DATASET, "-o", str(target), "--force") == 0
    assert hub.ModelCard.load(target).data.model_name == "leaky"


def test_several_models_need_model_and_unknown_model_lists_close_matches(run, capsys):
    assert _export(str(run), *DATASET) == 2
    err = capsys.readouterr().err
    assert "2 models (benign, leaky)" in err and "--model" in err
    assert _export(str(run), "--model", "leakyy", *DATASET) == 2
    assert 'did you mean "leaky"' in capsys.readouterr().err
    assert _export(str(run), "--model", "leaky@clap", *DATASET) == 2
    assert 'did you mean "leaky@clip"' in capsys.readouterr().err


def test_a_run_without_a_recorded_dataset_needs_the_dataset_options(run, capsys):
    assert _export(str(run), "--model", "leaky") == 2
    assert "--dataset-name NAME --dataset-type TYPE" in capsys.readouterr().err


def test_missing_run_folder_and_corrupt_results_exit_2(tmp_path, copy, capsys):
    assert _export(str(tmp_path / "nowhere"), "--model", "leaky", *DATASET) == 2
    assert "not found" in capsys.readouterr().err
    (copy / "results.json").write_text('{"schema_version": "1.1", "models": [', encoding="utf-8")
    assert _export(str(copy), "--model", "leaky", *DATASET) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert _export(str(copy), "--model", "leaky", *DATASET, "-o", str(tmp_path / "no" / "card.md")) == 2


def test_missing_extra_exits_2_naming_it(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
    assert _export(str(run), "--model", "leaky", *DATASET, "-o", str(tmp_path / "card.md")) == 2
    assert "pip install 'sing-audit[model-card]'" in capsys.readouterr().err
    assert not (tmp_path / "card.md").exists()


def test_random_weights_are_stamped_and_user_text_is_escaped(copy, tmp_path):
    data = json.loads((copy / "results.json").read_text(encoding="utf-8"))
    data["random_weights"] = True
    for m in data["models"]:
        if m["name"] == "leaky":
            m["random_weights"] = True
            m["random_weights_parts"] = ["backbone leaky"]
            for c in m["classes"]:
                if c["index"] == 5:
                    c["name"] = "<img src=x onerror=alert(1)> [click](http://evil) | *x*"
    (copy / "results.json").write_text(json.dumps(data), encoding="utf-8")
    card_path = tmp_path / "card.md"
    assert _export(str(copy), "--model", "leaky", "--dataset-name", "a|b <i>", "--dataset-type", "t", "-o", str(card_path)) == 0
    card = hub.ModelCard.load(card_path)
    assert "RANDOM WEIGHTS" in card.text and "random-weights" in card.data.tags
    assert "&lt;img src=x onerror=alert(1)&gt; \\[click\\](http://evil) \\| \\*x\\*" in card.text
    assert "<img" not in card.text and "<i>" not in card.text
    assert {e.dataset_name for e in card.data.eval_results} == {"a|b <i>"}  # literal in the metadata


def test_a_model_with_several_targets_keeps_each_target(copy, tmp_path):
    data = json.loads((copy / "results.json").read_text(encoding="utf-8"))
    leaky = next(m for m in data["models"] if m["name"] == "leaky")
    other = json.loads(json.dumps(leaky)) | {"target": "eva02", "is_mean": 1.25}
    data["models"].append(other)
    (copy / "results.json").write_text(json.dumps(data), encoding="utf-8")
    card_path = tmp_path / "card.md"
    assert _export(str(copy), "--model", "leaky", *DATASET, "-o", str(card_path)) == 0
    results = {(e.metric_type, e.metric_config): e.metric_value for e in hub.ModelCard.load(card_path).data.eval_results}
    assert results[("sing-audit/mean-is", "eva02")] == pytest.approx(1.25)
    assert results[("sing-audit/mean-is", "clip")] == pytest.approx(leaky["is_mean"])
    assert _export(str(copy), "--model", "leaky@eva02", *DATASET, "-o", str(card_path)) == 0
    assert {e.metric_config for e in hub.ModelCard.load(card_path).data.eval_results} == {"eva02"}
