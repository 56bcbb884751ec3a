"""The suite needs nothing beyond the README's set-up command, ``pip install -r requirements-dev.txt``.

That file installs the core (with its ``dev`` extra) and every plugin family under
``plugins/``, editable. Every third-party module that a test, a conftest, the library, a
plugin family or the example plugin (``examples/sing-audit-tinynet``: its sources and
tests run inside this suite) imports must belong to a distribution that one of those
projects requires, directly or through their own requirements
(``importlib.metadata.requires``).
A module that only the developer's machine happens to have (``jsonschema`` once) would
otherwise pass here and stop a fresh environment at collection.

The example plugin is built inside the suite with ``pip install --no-build-isolation``,
so its build requirements (``[build-system] requires``) must come from the same set.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "sing-audit-tinynet"
SETUP = REPO / "requirements-dev.txt"
FAMILIES = sorted(p.parent for p in (REPO / "plugins").glob("*/pyproject.toml"))
#: the code this suite imports: its own tests, the library, each plugin family (sources and
#: tests), the example plugin and its tests
SCANNED = [REPO / "tests", REPO / "sing_audit", *(f / d for f in FAMILIES for d in ("src", "tests")), EXAMPLE / "src", EXAMPLE / "tests"]
#: top-level names of this repository's own code, the families' test helpers among them (the example package is installed by
#: tests/test_third_party.py itself, into a private folder)
LOCAL = {"tests", "sing_audit", "sing_audit_tinynet", "conftest"} | {
    p.name for f in FAMILIES for p in (f / "src").iterdir() if p.is_dir() and (p / "__init__.py").is_file()
} | {p.stem for f in FAMILIES for p in (f / "tests").glob("*.py") if not p.name.startswith("test_")}
#: opt-in comparisons with a checkout of the original authors' code, never installed: they
#: are imported only inside a test, after it has skipped unless the checkout's path is set
OPT_IN = {
    "dinov2": "DINOV2_REPO, a checkout of facebookresearch/dinov2 (plugins/sing-audit-timm/tests/test_dino_vit.py)",
    "vision_transformer": "DINO_REPO, a checkout of facebookresearch/dino (plugins/sing-audit-timm/tests/test_dino_vit.py)",
}
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject(path: Path) -> dict | None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return None
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _setup_projects() -> list[tuple[Path, list[str]]]:
    """The projects the set-up command installs: ``(folder, extras)`` of every ``-e`` line
    of requirements-dev.txt (paths relative to the repository, where the README runs it)."""
    out = []
    for line in SETUP.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("-e "):
            assert not line, f"requirements-dev.txt: {line!r} is not an editable project of this repository"
            continue
        spec = line[3:].strip()
        path, _, extras = spec.partition("[")
        out.append((REPO / path, [e.strip() for e in extras.rstrip("]").split(",") if e.strip()]))
    return out


def _declared() -> list[Requirement]:
    """What the set-up command asks for: each project's dependencies and the extras it is
    installed with, as its pyproject.toml states them now where it can be read (an older
    install's metadata may lag behind it), else as installed; and the projects themselves."""
    out = []
    for folder, extras in _setup_projects():
        data = _pyproject(folder / "pyproject.toml")
        if data is not None:
            project = data["project"]
            out.append(Requirement(project["name"]))
            out += [Requirement(r) for r in project.get("dependencies", [])]
            for extra in extras:
                out += [Requirement(r) for r in project["optional-dependencies"][extra]]
            continue
        # Python 3.10 (no tomllib): the installed metadata of the editable project in ``folder``
        dist = next(d for d in metadata.distributions() if folder.as_uri() in (d.read_text("direct_url.json") or ""))
        out.append(Requirement(dist.metadata["Name"]))
        reqs = [Requirement(r) for r in dist.requires or []]
        out += [r for r in reqs if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras)]
    return out


def test_the_set_up_command_installs_the_core_and_every_plugin_family():
    installed = {folder.resolve() for folder, _ in _setup_projects()}
    assert REPO in installed and set(FAMILIES) <= installed, "requirements-dev.txt misses a plugin family"


@cache
def _required() -> frozenset[str]:
    """Canonical names of every distribution that the set-up command installs: the
    projects' declared requirements, closed over the installed distributions' own
    requirements, each with the extras asked for and markers evaluated for this interpreter."""
    todo = _declared()
    seen: dict[str, set[str]] = {}
    while todo:
        req = todo.pop()
        name = _canonical(req.name)
        extras = set(req.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        try:
            children = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # required but not installed: the import check below names it
        for text in children:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append(child)
    return frozenset(seen)


def _optional(node: ast.Try) -> bool:
    """A ``try`` whose handlers catch ImportError: what it imports may be absent."""
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(k, ast.Name) and k.id in IMPORT_ERRORS for k in kinds):
            return True
    return False


def _imports(tree: ast.AST):
    """(top-level module name, line, at module level?) of every absolute import in ``tree``,
    ``pytest.importorskip("name")`` and ``importlib.import_module("name")`` included
    (a skip on a missing module would hide the gap just as well), except those inside a
    ``try`` that catches ImportError."""

    def visit(node, top: bool):
        if isinstance(node, ast.Try) and _optional(node):
            for part in (node.handlers, node.orelse, node.finalbody):
                for child in part:
                    yield from visit(child, top)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno, top
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno, top
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("importorskip", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value.split(".")[0], node.lineno, top
        nested = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            yield from visit(child, nested)

    yield from visit(tree, True)


@cache
def _scan() -> dict[str, list[str]]:
    """Third-party top-level module name -> the places that import it."""
    found: dict[str, list[str]] = {}
    for root in SCANNED:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for name, line, top in _imports(tree):
                if name in sys.stdlib_module_names or name in LOCAL:
                    continue
                where = f"{path.relative_to(REPO)}:{line}"
                if name in OPT_IN:
                    assert not top, f"{where}: {name} is opt-in ({OPT_IN[name]}); import it inside the test, after the skip"
                    continue
                found.setdefault(name, []).append(where)
    return found


def test_the_scan_sees_the_imports():
    """The scan is not vacuous: it finds what the suite is known to import, and no stdlib."""
    found = _scan()
    assert {"numpy", "torch", "pytest", "hypothesis", "yaml", "PIL", "sklearn"} <= set(found)
    assert not {"json", "os", "__future__", "sing_audit"} & set(found)


def test_every_imported_module_is_installed_by_the_dev_extra():
    required = _required()
    dists = metadata.packages_distributions()
    missing = []
    for name, where in sorted(_scan().items()):
        providers = dists.get(name, [])
        if not any(_canonical(d) in required for d in providers):
            who = ", ".join(sorted(set(providers))) or "no installed distribution"
            missing.append(f"{name} ({who}) imported at {', '.join(where[:3])}")
    assert not missing, (
        "imported by the suite but not installed by pip install -r requirements-dev.txt; add each to the dev "
        "extra (or to the dependencies of the project that needs it):\n  " + "\n  ".join(missing)
    )


def test_the_example_plugin_builds_from_the_dev_environment():
    """tests/test_third_party.py builds the example with --no-build-isolation: its build backend
    must be one the dev extra installs, at a version its pyproject accepts (a fresh venv's own
    setuptools may be too old for it)."""
    required = _required()
    example = _pyproject(EXAMPLE / "pyproject.toml")
    if example is None:
        pytest.skip("reading the example's pyproject.toml needs tomllib (Python >= 3.11)")
    for text in example["build-system"]["requires"]:
        req = Requirement(text)
        assert _canonical(req.name) in required, f"the example's build requirement {text!r} is not in the dev extra"
        installed = Version(metadata.version(req.name))
        assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} does not satisfy {text!r}"
