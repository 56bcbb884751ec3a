"""A Hugging Face hub cache in a test's own folder, in huggingface_hub's layout
(``models--org--name/refs/<revision>`` -> ``snapshots/<commit>/``), for tests of hub ids
and revisions that run offline."""

from __future__ import annotations

from pathlib import Path

__all__ = ["fake_hub_repo"]


def fake_hub_repo(home: Path, monkeypatch, repo_id: str, refs: dict[str, str]) -> tuple[Path, Path]:
    """Point ``HF_HOME``/``HF_HUB_CACHE`` (and huggingface_hub's loaded constant) at ``home``
    and write ``refs`` (revision -> commit) of ``repo_id``; returns ``(cache, repo folder)``.
    The caller saves each commit's files under ``repo folder / "snapshots" / commit``."""
    import huggingface_hub.constants

    cache = home / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    for revision, commit in refs.items():
        (repo / "refs" / revision).write_text(commit)
    return cache, repo
