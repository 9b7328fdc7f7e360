"""The package's layers: lower folders never import higher ones (kopf's rule), checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "controller"
LEAVES = {"controller", "controller.api", "controller.logs", "controller.durations", "controller.paths",
          "controller.pki", "controller.argtypes", "controller.conditions", "controller.tokens"}
# folder -> the modules of ours it may import besides the leaves and itself
ALLOWED = {
    "kube": set(),
    "store": set(),
    "capture": {"controller.store", "controller.kube", "controller.snapshots", "controller.policy"},
    "replay": {"controller.store", "controller.kube", "controller.schema", "controller.snapshots"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("controller"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("controller")}
    return found


def _allowed(module: str, folder: str) -> bool:
    roots = {f"controller.{folder}"} | ALLOWED[folder]
    return module in LEAVES or any(module == r or module.startswith(r + ".") for r in roots)


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_folder_imports_nothing_above_it(folder: str) -> None:
    bad = {f"{p.relative_to(PACKAGE)}: {m}" for p in (PACKAGE / folder).rglob("*.py")
           for m in _imports(p) if not _allowed(m, folder)}
    assert not bad, sorted(bad)


def test_api_names_imports_nothing_of_ours() -> None:
    assert _imports(PACKAGE / "api.py") == set()
