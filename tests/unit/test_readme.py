"""README.md as a new user meets it, without emulators: its Python blocks parse, the
``<!-- not-run: reason -->`` markers are well formed, the ``cloudckpt[...]`` extras it shows
exist in pyproject.toml, and every cloudckpt error README.md or docs/ names is importable from
``cloudckpt``. The blocks themselves run in tests/system/test_readme_blocks.py.
"""

from __future__ import annotations

import ast
import builtins
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

import cloudckpt

PROJECT = Path(__file__).resolve().parents[2]
README = PROJECT / "README.md"
DOCS = sorted((PROJECT / "docs").glob("*.md"))

_FENCE = re.compile(r"^```([\w+-]*)\s*$")
#: the marker for a block that is not run, on the last non-blank line before its fence
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(\S.*?)\s*-->\s*$")
_NOT_RUN_LIKE = re.compile(r"<!--\s*not[\s_-]?run", re.I)


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    not_run: str | None  # the reason given by a not-run marker, if any


def blocks(path: Path = README) -> list[Block]:
    """The fenced blocks of ``path``, in order.

    Raises:
        AssertionError: a fence is never closed.
    """
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{path.name}:{i + 1}: code fence never closed"
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = NOT_RUN.match(lines[k]) if k >= 0 else None
        out.append(Block(i + 1, m.group(1), "\n".join(lines[i + 1:end]) + "\n",
                         marker.group(1) if marker else None))
        i = end + 1
    return out


def python_blocks(path: Path = README) -> list[Block]:
    return [b for b in blocks(path) if b.lang == "python"]


def test_the_readme_has_python_blocks_and_they_parse() -> None:
    found = python_blocks()
    assert len(found) >= 8
    for b in found:
        try:
            ast.parse(b.code)
        except SyntaxError as e:
            raise AssertionError(f"README.md:{b.line}: the python block does not parse: {e}") from e


def test_not_run_markers_are_well_formed_and_precede_a_python_block() -> None:
    lines = README.read_text().splitlines()
    fences = {b.line: b for b in blocks()}
    for n, text in enumerate(lines, 1):
        if not _NOT_RUN_LIKE.match(text.strip()):  # a marker is a line of its own
            continue
        assert NOT_RUN.match(text), f"README.md:{n}: write it as <!-- not-run: the reason -->"
        nxt = next(i for i in range(n, len(lines)) if lines[i].strip()) + 1
        assert nxt in fences and fences[nxt].lang == "python", \
            f"README.md:{n}: a not-run marker must come right before a ```python block"


def _extras_shown() -> set[str]:
    found: set[str] = set()
    for path in (README, *DOCS):
        for group in re.findall(r"cloudckpt\[([^\]]+)\]", path.read_text()):
            found.update(x.strip() for x in group.split(","))
    return found


def test_the_extras_shown_exist_and_the_user_facing_ones_are_all_shown() -> None:
    declared = set(tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
                   ["optional-dependencies"])
    shown = _extras_shown()
    assert {"s3", "hf"} <= shown
    assert shown <= declared, f"README/docs show extras pyproject.toml lacks: {shown - declared}"
    text = README.read_text()
    missing = [x for x in sorted(declared - {"bench", "dev"}) if f"`{x}`" not in text]
    assert not missing, f"extras not mentioned in README.md: {missing}"


def _exception_classes() -> set[str]:
    """Names of the exception classes defined anywhere in the cloudckpt package (by AST: a
    class whose base is a built-in exception or another such class)."""
    known = {n for n in dir(builtins) if isinstance(getattr(builtins, n), type)
             and issubclass(getattr(builtins, n), BaseException)}
    classes: dict[str, set[str]] = {}
    for path in (PROJECT / "src" / "cloudckpt").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else b.attr for b in node.bases
                         if isinstance(b, (ast.Name, ast.Attribute))}
                classes.setdefault(node.name, set()).update(bases)
    ours: set[str] = set()
    while True:
        new = {n for n, bases in classes.items() if n not in ours and bases & (known | ours)}
        if not new:
            return ours
        ours |= new


def test_every_documented_error_is_importable_from_cloudckpt() -> None:
    errors = _exception_classes()
    assert {"NotFound", "CorruptCheckpoint", "UnsupportedFramework"} <= errors
    documented: dict[str, str] = {}
    for path in (README, *DOCS):
        for name in re.findall(r"`(?:cloudckpt\.(?:errors\.)?)?([A-Z]\w+)`", path.read_text()):
            if name in errors:
                documented.setdefault(name, path.name)
    assert len(documented) >= 15
    bad = [f"{n} ({where})" for n, where in sorted(documented.items())
           if not (isinstance(getattr(cloudckpt, n, None), type)
                   and issubclass(getattr(cloudckpt, n), cloudckpt.CloudckptError))]
    assert not bad, f"documented errors not importable from cloudckpt as CloudckptErrors: {bad}"


def test_the_block_parser_reads_markers_and_refuses_open_fences(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text("text\n\n```python\na = 1\n```\n<!-- not-run: needs a GPU -->\n\n```python\n"
                  "b = 2\n```\n<!-- other comment -->\n```sh\nls\n```\n")
    got = blocks(md)
    assert [(b.line, b.lang, b.code, b.not_run) for b in got] == [
        (3, "python", "a = 1\n", None), (8, "python", "b = 2\n", "needs a GPU"),
        (12, "sh", "ls\n", None)]
    assert [b.line for b in python_blocks(md)] == [3, 8]
    md.write_text("```python\na = 1\n")
    with pytest.raises(AssertionError, match="never closed"):
        blocks(md)
    for bad in ("<!-- not-run: -->", "<!-- not-run -->", "<!-- NOT-RUN: x -->"):
        assert not NOT_RUN.match(bad), bad
