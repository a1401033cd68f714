"""Dependencies point one way: the storage layer imports no data, generation or retrieval code; the
retriever does not import the generator; the experiment loop does not reach the command line.
Imports inside functions count: they are where such a dependency used to hide."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "slm_ray"


def _imports(path: Path) -> set[str]:
    """Every ``slm_ray`` module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("slm_ray")}


def _modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py")) if (PACKAGE / folder).is_dir() else [PACKAGE / f"{folder}.py"]


RULES = [
    # (modules, packages they must not import, why)
    ("store", ("slm_ray.data", "slm_ray.generation", "slm_ray.retrieval", "slm_ray.evaluation", "slm_ray.sweeps",
               "slm_ray.experiment", "slm_ray.tracking", "slm_ray.cli", "slm_ray.run"),
     "the storage layer sits below everything that produces what it stores"),
    ("retrieval", ("slm_ray.generation",), "the hardware's dtype rule lives below both (slm_ray.dtypes)"),
    ("data", ("slm_ray.generation", "slm_ray.retrieval", "slm_ray.evaluation", "slm_ray.sweeps", "slm_ray.cli"),
     "data is read by the layers above"),
    ("experiment", ("slm_ray.cli", "slm_ray.commands", "slm_ray.sweeps"), "the trial loop runs under a command, never calls one"),
    ("dtypes", ("slm_ray.generation", "slm_ray.retrieval"), "below both"),
]


@pytest.mark.parametrize("folder, forbidden, why", RULES, ids=[rule[0] for rule in RULES])
def test_dependencies_point_one_way(folder: str, forbidden: tuple[str, ...], why: str) -> None:
    modules = _modules(folder)
    assert modules and all(path.exists() for path in modules), folder
    wrong = [f"{path.relative_to(PACKAGE.parent)} imports {name}" for path in modules for name in sorted(_imports(path))
             if any(name == f or name.startswith(f + ".") for f in forbidden)]
    assert wrong == [], why


def test_the_storage_layer_is_one_package() -> None:
    """Its modules are under slm_ray/store/, none left at the top beside the commands."""
    stored = {p.stem for p in (PACKAGE / "store").glob("*.py")} - {"__init__"}
    assert {"run_folder", "sweep_folder", "cache_entry", "cache_manifest", "fingerprints", "io", "results"} <= stored
    assert not stored & {p.stem for p in PACKAGE.glob("*.py")}
