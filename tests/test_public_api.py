"""The names an application uses come from ``chatter_otel`` itself, and importing it stays
light: no LangChain, FastAPI, LangGraph or reference service until the app asks for them."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import chatter_otel

README = Path(__file__).resolve().parent.parent / "README.md"
GUIDE_SECTIONS = ("## Using it in Chatter", "## Adopting chatter-otel in an existing Chatter")
# chatter_otel.name or chatter_otel.module.name, as written in code or prose.
REFERENCE = re.compile(r"\bchatter_otel((?:\.[A-Za-z_]\w*)+)")


def _section(text: str, heading: str) -> str:
    start = text.index(heading + "\n")
    following = re.search(r"^## ", text[start + len(heading) :], re.MULTILINE)
    end = start + len(heading) + following.start() if following else len(text)
    return text[start:end]


def _guide_references() -> list[str]:
    text = README.read_text(encoding="utf-8")
    found: set[str] = set()
    for heading in GUIDE_SECTIONS:
        found.update(m[1].lstrip(".") for m in REFERENCE.finditer(_section(text, heading)))
    return sorted(found)


def _resolve(dotted: str) -> object:
    """``a.b.c`` under ``chatter_otel``: attributes, importing submodules on the way."""
    target: object = chatter_otel
    path = "chatter_otel"
    for part in dotted.split("."):
        path = f"{path}.{part}"
        if isinstance(target, ModuleType) and not hasattr(target, part):
            target = importlib.import_module(path)
        else:
            target = getattr(target, part)
    return target


def test_the_guide_names_what_it_uses() -> None:
    # Guards the test below against a README reshuffle that leaves it nothing to check.
    assert {"setup_telemetry", "workflow_span", "model_span", "bind_message"} <= set(
        _guide_references()
    )


@pytest.mark.parametrize("dotted", _guide_references())
def test_every_name_the_guide_uses_resolves(dotted: str) -> None:
    assert _resolve(dotted) is not None


@pytest.mark.parametrize("name", sorted(chatter_otel.__all__))
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(chatter_otel, name) is not None


def test_the_turn_handle_and_the_tool_result_helper_are_exported() -> None:
    from chatter_otel._workflow_run import WorkflowRun
    from chatter_otel.spans import record_tool_result

    assert chatter_otel.WorkflowRun is WorkflowRun
    assert chatter_otel.record_tool_result is record_tool_result
    assert {"WorkflowRun", "record_tool_result"} <= set(chatter_otel.__all__)


def test_importing_chatter_otel_loads_no_optional_integration() -> None:
    heavy = ("langchain", "langgraph", "fastapi", "starlette", "uvicorn", "chatter_otel.service")
    code = (
        "import sys, chatter_otel\n"
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_adoption_diff_changes_at_most_15_lines_as_the_guide_says() -> None:
    """Issue 12: adopting chatter-otel in a Chatter-shaped app is a diff of at most 15
    changed lines outside configuration; the guide states its count, which must be true."""
    guide = _section(README.read_text(encoding="utf-8"), GUIDE_SECTIONS[1])
    block = guide[guide.index("```diff\n") + len("```diff\n") :]
    lines = block[: block.index("```")].splitlines()
    changed = [line for line in lines if line[:1] in ("+", "-")]
    claimed = re.search(r"(\d+) changed lines \((\d+) added, (\d+) removed", guide)
    assert claimed is not None
    added = sum(line.startswith("+") for line in changed)
    assert (len(changed), added, len(changed) - added) == (14, 11, 3)
    assert tuple(int(n) for n in claimed.groups()) == (14, 11, 3)
