"""The package's layers run one way: what each part may import of ours, and no import circle anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "transformer"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The modules of ours that ``path`` imports at the top level or inside functions (all of them count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("transformer"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from package import module`
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("transformer"))
    return found


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def reaches(name: str) -> set[str]:
    """Every module of ours that importing ``name`` may import, directly or not (packages' ``__init__`` aside)."""
    seen, todo = set(), [name]
    while todo:
        for dep in GRAPH[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_graph_is_read():
    assert "transformer.model.transformer" in GRAPH["transformer.decoding.ensemble"]
    assert len(MODULES) > 40


@pytest.mark.parametrize(
    "part, forbidden",
    [
        ("transformer.tokens", ("transformer.",)),
        ("transformer.errors", ("transformer.",)),
        ("transformer.config", ("transformer.data", "transformer.model", "transformer.training", "transformer.cli")),
        ("transformer.model.masks", ("transformer.",)),
        ("transformer.model", ("transformer.data", "transformer.training", "transformer.decoding",
                               "transformer.inference", "transformer.cli")),
        ("transformer.data", ("transformer.model", "transformer.training", "transformer.decoding",
                              "transformer.inference", "transformer.cli")),
        ("transformer.checkpoint", ("transformer.decoding", "transformer.training", "transformer.inference",
                                    "transformer.cli")),
        ("transformer.decoding", ("transformer.training", "transformer.inference", "transformer.cli")),
        ("transformer.inference", ("transformer.training", "transformer.evaluation", "transformer.cli")),
        ("transformer.evaluation", ("transformer.training", "transformer.cli")),
        ("transformer.plotting", ("transformer.training", "transformer.cli")),
        ("transformer.training", ("transformer.cli", "transformer.benchmarks", "transformer.serving")),
        ("transformer.serving", ("transformer.training", "transformer.cli", "transformer.benchmarks")),
        ("transformer.cli.translate", ("transformer.training",)),
        ("transformer.cli.evaluate", ("transformer.training",)),
        ("transformer.cli.plot", ("transformer.training",)),
    ],
)
def test_a_part_never_imports_the_layers_above_it(part, forbidden):
    modules = [name for name in MODULES if name == part or name.startswith(part + ".")]
    assert modules, part
    bad = sorted(
        f"{name} -> {dep}"
        for name in modules
        for dep in GRAPH[name]
        if any(dep == f or dep.startswith(f) for f in forbidden) and dep != name
    )
    assert not bad, bad


def test_no_import_circle():
    # A package's __init__ re-exports its modules, so edges into an __init__ are followed through its members.
    circles = sorted(name for name in MODULES if name in reaches(name))
    assert not circles, f"modules that import themselves through others: {circles}"


def test_no_command_module_imports_another():
    commands = {name for name in MODULES if name.startswith("transformer.cli.") and name != "transformer.cli.options"}
    bad = sorted(f"{name} -> {dep}" for name in commands for dep in GRAPH[name] if dep in commands)
    assert not bad, bad


def test_no_type_ignore_in_the_benchmarks():
    offenders = [str(p) for p in (PACKAGE / "benchmarks").rglob("*.py") if "type: ignore" in p.read_text()]
    assert not offenders, offenders
