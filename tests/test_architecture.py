"""The package's shape, as docs/architecture.md describes it: no import cycle (function-level
imports included), graph/ is maths over arrays and Zarr that knows nothing of runs, and planning
(what Snakemake imports to build its DAG) loads neither torch nor numpy."""

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its body (a submodule's import of
    its own package is not counted: that is how Python loads it)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                target = ".".join(filter(None, [base, node.module or ""]))
                candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            for target in candidates:
                if target in modules and target != name and not name.startswith(target + "."):
                    edges[name].add(target)
    return edges


def test_the_package_has_no_import_cycle():
    edges = imports()
    assert len(edges) > 30 and "pipeline.plan" in edges["pipeline.cli"]  # a function-level import
    try:
        list(TopologicalSorter(edges).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_the_cycle_check_sees_function_level_imports(tmp_path, monkeypatch):
    """The walk finds an import inside a function body (the kind that hid the old cycles)."""
    fake = tmp_path / "pipeline"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "a.py").write_text("from .b import f\n")
    (fake / "b.py").write_text("def f():\n    from .a import g\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    edges = imports()
    assert edges["pipeline.b"] == {"pipeline.a"} and edges["pipeline.a"] == {"pipeline.b"}


def test_graph_is_maths_that_knows_nothing_of_runs():
    allowed = {"pipeline.errors", "pipeline.runtime", "pipeline.formats"}  # plumbing, and the Zarr reader
    for name, targets in imports().items():
        if name.startswith("pipeline.graph"):
            outside = {t for t in targets if not t.startswith("pipeline.graph")} - allowed
            assert not outside, f"{name} imports {sorted(outside)}"


def test_planning_a_workflow_loads_neither_torch_nor_numpy():
    code = "import sys, pipeline.plan, pipeline.spec; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_methods_are_told_apart_by_their_traits_not_their_names():
    """Behaviour follows a method's traits (spec.MethodTraits: its embedding, read-out, where it
    is fit): no module but spec.py, and no rule, asks which method a run is."""
    import re

    sources = [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "workflow" / "rules").glob("*.smk")]
    asks = [
        f"{path.name}:{number}"
        for path in sources
        if path.name != "spec.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bis (not )?Method\.", line)
    ]
    assert asks == []


def test_the_command_line_only_parses_calls_and_prints():
    """Each command of cli.py hands its options to the package in a few lines; the stage logic
    lives in the modules it calls."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    commands = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("cmd_")]
    assert len(commands) >= 12
    long = {node.name: node.end_lineno - node.lineno + 1 for node in commands if node.end_lineno - node.lineno >= 30}
    assert long == {}
    assert len((PACKAGE / "cli.py").read_text().splitlines()) <= 350
