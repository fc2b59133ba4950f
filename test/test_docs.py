"""The user documentation stays true to the code: docs/parameters.md lists every node parameter with the
type, default, range and runtime flag that g2vlm_ros/ros/params.py declares, the README keeps the two
quick-start commands, and every relative link in README.md and docs/*.md leads to a file (and heading)
that exists."""
from __future__ import annotations

import re

import pytest

from conftest import REPO
from g2vlm_ros.ros.params import PARAMETERS, camera_specs

PARAMETERS_DOC = REPO / "docs" / "parameters.md"
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TYPES = {bool: "bool", int: "int", float: "double", str: "string", list: "string[]"}


def _shown(value) -> str:
    """A default as docs/parameters.md writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    return repr(value)


def _range(spec) -> str:
    if spec.choices:
        return ", ".join(spec.choices)
    if spec.int_range:
        return f"{spec.int_range[0]} to {spec.int_range[1]}"
    if spec.float_range:
        return f"{spec.float_range[0]:g} to {spec.float_range[1]:g}"
    return ""


def _table_rows(text: str) -> dict[str, list[str]]:
    """Rows of the Markdown tables whose first cell is a `code` name: name -> the other cells."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\| `([^`]+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split(" | ")]
    return rows


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


@pytest.mark.parametrize("spec", PARAMETERS, ids=lambda spec: spec.name)
def test_every_parameter_is_documented_as_declared(spec):
    rows = _table_rows(PARAMETERS_DOC.read_text())
    assert spec.name in rows, f"docs/parameters.md has no row for parameter '{spec.name}'"
    kind, default, bounds, runtime, meaning = rows[spec.name][:5]
    assert kind == TYPES[type(spec.default)]
    assert default == f"`{_shown(spec.default)}`"
    assert bounds == _range(spec)
    assert runtime == ("no" if spec.read_only else "yes")
    assert meaning


def test_every_per_camera_parameter_is_documented_as_declared():
    rows = _table_rows(PARAMETERS_DOC.read_text())
    for spec in camera_specs("front"):
        assert spec.name in rows, f"docs/parameters.md has no row for per-camera parameter '{spec.name}'"
        kind, default, choices, runtime = rows[spec.name][:4]
        assert (kind, default, choices, runtime) == ("string", f"`{_shown(spec.default)}`", _range(spec), "no")


def test_the_quick_start_is_two_commands():
    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = quick_start.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in block.splitlines()] == [["make", "demo"], ["make", "test"]]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_relative_links_resolve(document):
    for target in LINK.findall(document.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        assert linked.exists(), f"{document.name}: link to missing {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{document.name}: no heading for #{anchor} in {linked.name}"


def test_questions_doc_shows_the_query_schema_as_the_code_defines_it():
    from g2vlm_ros.reasoning.query import schema_text

    text = (REPO / "docs" / "questions.md").read_text()
    section = text[text.index("## Tool definition for LLM agents"):]
    blocks = re.findall(r"```json\n(.*?)```", section, re.DOTALL)
    assert blocks and blocks[-1].strip() == schema_text().strip(), "docs/questions.md shows an outdated schema"
