"""The layering of DESIGN.md, checked on the source's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORCHESTRATION = {"prefect", "prefect_dask", "dask", "distributed", "dask_cuda"}


def imported_modules(folder: str) -> dict[str, set[str]]:
    """Top-level module names imported by each Python file under `folder` (relative imports as
    '.', absolute salaudit imports as their first two parts)."""
    out = {}
    for path in (ROOT / folder).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        out[str(path.relative_to(ROOT))] = names
    return out


def roots(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_lib_imports_no_orchestration():
    for path, names in imported_modules("lib").items():
        assert not roots(names) & ORCHESTRATION, f"{path} imports {roots(names) & ORCHESTRATION}"


def test_lib_does_not_import_tasks_or_flows():
    for path, names in imported_modules("lib").items():
        bad = {n for n in names if n.startswith(("salaudit.tasks", "salaudit.flows"))}
        assert not bad, f"{path} imports {bad}"


def test_tasks_do_not_import_flows():
    for path, names in imported_modules("tasks").items():
        bad = {n for n in names if n.startswith("salaudit.flows")}
        assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize(
    "module",
    ["salaudit", "salaudit.pipeline.explain", "salaudit.store.store", "salaudit.report.html"],
)
def test_library_imports_without_orchestration(module):
    """Importing the library loads no orchestration package (checked in a fresh process)."""
    import subprocess
    import sys

    code = (
        f"import sys, {module}; "
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(ORCHESTRATION)!r}); "
        "print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nothing_generic_installed_top_level():
    """The distribution installs `salaudit` (lib, tasks and flows inside it), nothing generic."""
    import importlib
    import importlib.metadata

    for name in ("salaudit", "salaudit.tasks", "salaudit.flows", "salaudit.flows.cli"):
        importlib.import_module(name)
    top = {k for k, v in importlib.metadata.packages_distributions().items() if "salaudit" in v}
    assert top == {"salaudit"}
    entry = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert entry["salaudit"] == "salaudit.flows.cli:main"
