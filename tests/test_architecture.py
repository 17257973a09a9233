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
