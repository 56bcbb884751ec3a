"""The README stands on its own: it points only to files in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_points_nowhere_outside_the_repository():
    assert "../" not in README, "the README points outside the repository"
    for target in re.findall(r"\]\(([^)]+)\)", README):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        assert (ROOT / target.split("#")[0]).exists(), f"README links to {target}, which is not in the repository"


def test_docs_the_readme_names_exist():
    named = set(re.findall(r"`((?:docs|examples|benchmarks)/[^`\s]+)`", README))
    assert "docs/design.md" in named
    for rel in named:
        assert (ROOT / rel.rstrip("/")).exists(), f"README names {rel}, which does not exist"
