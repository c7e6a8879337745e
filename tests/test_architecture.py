"""The layering rules the architecture document states, checked on the source."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fieldcraft"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _task_of(path: Path) -> str:
    rel = path.relative_to(SRC / "tasks")
    return rel.parts[0].removesuffix(".py")


def test_no_task_imports_another_task():
    offenders = []
    for path in (SRC / "tasks").rglob("*.py"):
        own = _task_of(path)
        for name in _imports(path):
            parts = name.split(".")
            if parts[:2] == ["fieldcraft", "tasks"] and len(parts) > 2 and parts[2] != own:
                offenders.append(f"{path.relative_to(SRC)} imports {name}")
    assert offenders == []


def test_layers_below_tasks_never_import_tasks_or_commands():
    offenders = []
    for path in SRC.rglob("*.py"):
        top = path.relative_to(SRC).parts[0]
        if top in ("tasks", "commands", "cli.py", "__main__.py"):
            continue
        for name in _imports(path):
            if name.startswith(("fieldcraft.tasks", "fieldcraft.commands", "fieldcraft.cli")):
                offenders.append(f"{path.relative_to(SRC)} imports {name}")
    assert offenders == []


def test_psnr_has_a_single_definition():
    """Only fieldcraft.metrics turns an error into decibels (``10 log10``); others call it."""
    import re

    pattern = re.compile(r"10(\.0)?\s*\*\s*(\w+\.)?log10|log10\(1(\.0)?\s*/")
    defs = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p.name != "metrics.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert defs == []


def test_no_hard_coded_cuda():
    offenders = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if ".cuda()" in line]
    assert offenders == []
