"""Every distribution of the repository builds as a wheel, and the wheels alone run the demo.

The core (``pyproject.toml``) and each plugin family (``plugins/*/pyproject.toml``) are
built with ``pip wheel`` and installed, without their dependencies, into a fresh virtual
environment. The libraries they depend on (torch, timm, ...; gigabytes) are borrowed from
the environment running the tests through a ``.pth`` line, which adds that environment's
``site-packages`` after the new environment's own: the new environment's wheels come
first on ``sys.path``, and entry points resolve to the first distribution of each name, so
the editable copies of the developer's environment are shadowed (and their ``.pth`` import
hooks are never run: a plain path line does not process the ``.pth`` files of the folder
it adds). What runs is the wheels' code, registered through the wheels' entry points.
"""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECTS = [REPO, *sorted(p.parent for p in (REPO / "plugins").glob("*/pyproject.toml"))]


def _name(project: Path) -> str:
    import tomllib

    return tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]["name"]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """A fresh venv holding the wheels of the core and every family (and nothing else of ours)."""
    pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    root = tmp_path_factory.mktemp("wheels")
    wheels = root / "dist"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for project in PROJECTS:
        # built from a copy of what git tracks: a stale build/ folder of the checkout must not fill gaps
        source = root / "src" / project.relative_to(REPO)
        prefix = "" if project == REPO else project.relative_to(REPO).as_posix() + "/"
        for rel in tracked:
            if rel and rel.startswith(prefix) and (project == REPO and not rel.startswith("plugins/") or project != REPO):
                dest = source / rel[len(prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, dest)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
            capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, f"{project.name} does not build a wheel:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    env = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    own = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip())
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(own),
         *sorted(str(w) for w in wheels.glob("*.whl"))],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    borrowed = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (own / "zz-borrowed-dependencies.pth").write_text("\n".join(dict.fromkeys(borrowed)) + "\n", encoding="utf-8")
    return python, own, sorted(w.name for w in wheels.glob("*.whl"))


def _wheel_dir(own: Path) -> Path:
    """The folder the fixture built the wheels into (beside the venv)."""
    return next(p for p in own.parents if (p / "dist").is_dir()) / "dist"


def _run(python: Path, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(cwd)})


def _packages(project: Path) -> set[str]:
    """The import packages of a project's source tree (folders with an ``__init__.py``)."""
    src = project / "src" if (project / "src").is_dir() else project
    roots = [src / "sing_audit"] if project == REPO else [p for p in src.iterdir() if (p / "__init__.py").is_file()]
    found = {".".join(d.relative_to(src).parts) for r in roots for d in [r, *r.rglob("*")] if (d / "__init__.py").is_file()}
    if project == REPO:
        found.add("sing_audit.report_templates")  # the top-level report_templates/, mapped into the package
    return {p for p in found if "__pycache__" not in p}


@pytest.mark.slow
def test_each_distribution_builds_a_wheel_with_all_its_code(wheel_env):
    import zipfile

    _, own, wheels = wheel_env
    for project in PROJECTS:
        name = _name(project).replace("-", "_")
        (wheel,) = [w for w in wheels if w.startswith(name + "-")]
        with zipfile.ZipFile(_wheel_dir(own) / wheel) as zf:
            files = zf.namelist()
        in_wheel = {Path(f).parent.as_posix().replace("/", ".") for f in files if f.endswith("__init__.py")}
        assert _packages(project) <= in_wheel, f"{wheel} lacks {sorted(_packages(project) - in_wheel)}"
        if project == REPO:
            templates = {p.name for p in (REPO / "report_templates").glob("*.j2")}
            assert templates <= {Path(f).name for f in files if f.startswith("sing_audit/report_templates/")}


@pytest.mark.slow
def test_the_wheels_run_the_offline_demo(wheel_env, tmp_path):
    python, own, _ = wheel_env
    where = _run(python, "-c", "import sing_audit, sing_audit_pdf; print(sing_audit.__file__); print(sing_audit_pdf.__file__)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(own)) for line in where.stdout.split()), where.stdout  # the wheels, not the checkout
    demo = _run(python, "-m", "sing_audit", "run", str(REPO / "examples" / "synthetic" / "audit.yaml"),
                "-o", f"output={tmp_path / 'demo'}", cwd=tmp_path)
    assert demo.returncode == 1, demo.stdout[-3000:] + demo.stderr[-3000:]  # the planted leakage fails the policy
    result = json.loads((tmp_path / "demo" / "results.json").read_text(encoding="utf-8"))
    flagged = sorted((m["name"], c["name"]) for m in result["models"] for c in m["classes"] if c["flagged"])
    assert flagged == [("leaky", "jellyfish"), ("leaky", "sports car")]
    assert (tmp_path / "demo" / "report.pdf").read_bytes().startswith(b"%PDF")  # the pdf family's wheel


@pytest.mark.slow
def test_plugins_names_each_components_distribution(wheel_env, tmp_path):
    python, _, _ = wheel_env
    proc = _run(python, "-m", "sing_audit", "plugins", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    packages = {row["package"].split()[0] for row in json.loads(proc.stdout)}
    for project in PROJECTS[1:]:
        assert _name(project) in packages, f"no component of {_name(project)} is listed by `sing-audit plugins`"
