"""docs/plugins.md keeps up with the hooks, and every hook has a test.

The rules, for every hook declared in ``sing_audit.hookspecs`` (found through pluggy's
spec marker, not a list kept here):

1. **Documented:** ``docs/plugins.md`` has exactly one heading naming the hook
   (`` ## `register_x` ``); its section states the factory signature (``factory(``)
   and holds a ``python`` block implementing the hook (``@hookimpl`` then
   ``def register_x(``). No heading names a hook that does not exist.
2. **Tested:** some test function (``test_*``, in ``tests/test_*.py`` other than this
   file) mentions the hook by name in its body — it registers a component through that
   hook, or implements it. A docs example does not count.
3. **Runnable:** every ``python`` block of the page runs, in order, in one namespace, in
   an empty folder.

A new hook without a section, without an example, or without a test fails here.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import traceback
from pathlib import Path

import pytest

import sing_audit
from sing_audit import hookspecs

REPO = Path(sing_audit.__file__).resolve().parent.parent
DOCS = REPO / "docs" / "plugins.md"
TESTS = REPO / "tests"
EXAMPLE_PYPROJECT = REPO / "examples" / "sing-audit-tinynet" / "pyproject.toml"

_FENCE = re.compile(r"^```(\S*)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


def hook_names() -> list[str]:
    """Every hook specification in ``sing_audit.hookspecs`` (functions carrying pluggy's spec marker)."""
    marker = f"{hookspecs.hookspec.project_name}_spec"
    return sorted(name for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, marker))


# --------------------------------------------------------------------------- markdown


def run_python_block(page: Path, start: int, code: str, namespace: dict) -> None:
    """Run one ``python`` block of a docs page in ``namespace``; a failure names the
    page's line that failed (``docs/plugins.md line 42 fails: ...``)."""
    try:
        exec(compile(code, f"{page}:{start}", "exec"), namespace)  # noqa: S102 - the docs are ours
    except Exception:  # noqa: BLE001 - reported with the line of the page that failed
        where = start
        for frame in traceback.extract_tb(sys.exc_info()[2]):
            if frame.filename == f"{page}:{start}":
                where = start + (frame.lineno or 1) - 1
        line = page.read_text(encoding="utf-8").splitlines()[where - 1].strip()
        pytest.fail(f"docs/{page.name} line {where} fails: {line}\n{traceback.format_exc()}")


def code_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(language, first line number, code)`` of every fenced block."""
    blocks, lang, start, lines = [], None, 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        m = _FENCE.match(line)
        if lang is None and m:
            lang, start, lines = m.group(1), number + 1, []
        elif lang is not None and line.strip() == "```":
            blocks.append((lang, start, "\n".join(lines) + "\n"))
            lang = None
        elif lang is not None:
            lines.append(line)
    assert lang is None, f"unclosed code block starting at line {start - 1}"
    return blocks


def sections(text: str) -> list[tuple[int, str, str]]:
    """``(level, heading, body)`` per heading outside code blocks; the body runs to the
    next heading of the same or a higher level."""
    heads, in_code = [], False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if _FENCE.match(line) or (in_code and line.strip() == "```"):
            in_code = not in_code
            continue
        m = None if in_code else _HEADING.match(line)
        if m:
            heads.append((i, len(m.group(1)), m.group(2)))
    out = []
    for j, (i, level, title) in enumerate(heads):
        end = next((k for k, lv, _ in heads[j + 1 :] if lv <= level), len(lines))
        out.append((level, title, "\n".join(lines[i + 1 : end])))
    return out


def undocumented(hooks: list[str], text: str) -> dict[str, str]:
    """hook -> what its documentation lacks (rule 1)."""
    problems = {}
    secs = sections(text)
    for hook in hooks:
        named = [(title, body) for _, title, body in secs if re.search(rf"\b{hook}\b", title)]
        if len(named) != 1:
            problems[hook] = f"{len(named)} headings name it (expected exactly one)"
            continue
        _, body = named[0]
        python = [code for lang, _, code in code_blocks(body) if lang == "python"]
        if "factory(" not in body:
            problems[hook] = "its section does not state the factory signature (factory(...))"
        elif not python:
            problems[hook] = "its section has no python example"
        elif not any(re.search(rf"@hookimpl\s*\n\s*def {hook}\(", code) for code in python):
            problems[hook] = f"its python example does not implement the hook (@hookimpl def {hook}(...))"
    return problems


def documented_unknown(hooks: list[str], text: str) -> list[str]:
    """Headings naming a ``register_*`` hook that does not exist."""
    named = {m for _, title, _ in sections(text) for m in re.findall(r"\bregister_\w+", title)}
    return sorted(named - set(hooks))


# --------------------------------------------------------------------------- tests


@functools.lru_cache(maxsize=4)
def collect_test_functions(tests_dir: Path, exclude: tuple[str, ...] = ("test_plugin_docs.py",)) -> dict[str, str]:
    """``{qualified test name: its source}`` of every test function in ``tests_dir``."""
    out = {}
    for path in sorted(tests_dir.glob("test_*.py")):
        if path.name in exclude:
            continue
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                out[f"{path.name}::{node.name}"] = ast.get_source_segment(source, node) or ""
    return out




def untested(hooks: list[str], tests: dict[str, str]) -> list[str]:
    """Hooks no test function mentions (rule 2)."""
    return [hook for hook in hooks if not any(re.search(rf"\b{hook}\b", src) for src in tests.values())]


def test_hooks_are_discovered():
    hooks = hook_names()
    assert len(hooks) >= 8 and all(h.startswith("register_") for h in hooks)
    from sing_audit.host import KINDS

    assert set(hooks) == set(KINDS.values()), "every hook is a component kind of the host"


def test_every_hook_is_documented_with_an_example():
    text = DOCS.read_text(encoding="utf-8")
    assert undocumented(hook_names(), text) == {}
    assert documented_unknown(hook_names(), text) == []


def test_every_hook_has_a_test():
    missing = untested(hook_names(), collect_test_functions(TESTS))
    assert missing == [], f"no test function mentions {missing}: add a test that registers a component through it"


def test_the_rules_catch_a_new_hook():
    """A hook added to the specs without docs or tests fails the two checks above."""
    hooks = hook_names() + ["register_gadgets"]
    text = DOCS.read_text(encoding="utf-8")
    assert set(undocumented(hooks, text)) == {"register_gadgets"}
    assert untested(hooks, collect_test_functions(TESTS)) == ["register_gadgets"]
    # a section without an implementing example does not count
    stub = text + "\n## `register_gadgets`\n\nRegisters gadgets. Factory: `factory(options)`.\n\n```python\nx = 1\n```\n"
    assert "does not implement" in undocumented(hooks, stub)["register_gadgets"]
    assert documented_unknown(hook_names(), stub) == ["register_gadgets"]


def test_entry_point_snippet_matches_the_example_package():
    import tomllib

    (toml,) = [code for lang, _, code in code_blocks(DOCS.read_text(encoding="utf-8")) if lang == "toml"]
    documented = tomllib.loads(toml)["project"]["entry-points"]["sing_audit"]
    example = tomllib.loads(EXAMPLE_PYPROJECT.read_text(encoding="utf-8"))["project"]["entry-points"]["sing_audit"]
    assert documented == example == {"tinynet": "sing_audit_tinynet.plugin"}


@pytest.mark.slow
def test_docs_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SING_AUDIT_LOAD_PLUGINS", raising=False)
    blocks = [(start, code) for lang, start, code in code_blocks(DOCS.read_text(encoding="utf-8")) if lang == "python"]
    assert len(blocks) >= len(hook_names())
    namespace: dict = {"__name__": "docs_plugins"}
    for start, code in blocks:
        run_python_block(DOCS, start, code, namespace)
