"""Nothing imports upwards: each package imports only the layers below it (every import statement, those
inside functions included). `immunode` wires them all together and sits on top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ALLOWED = {
    "common": {"common"},
    "models": {"common", "models"},
    "storage": {"common", "storage"},
    "dicom_node": {"common", "storage", "dicom_node"},
    "pipelines": {"common", "models", "pipelines"},
    "research": {"common", "models", "storage", "pipelines", "research"},
    "immunode": {"common", "models", "storage", "dicom_node", "pipelines", "research", "immunode"},
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_package_imports_a_layer_above_it(package: str) -> None:
    upward = {
        str(path.relative_to(REPO)): sorted(_imported_packages(path) - ALLOWED[package])
        for path in (REPO / package).rglob("*.py")
        if "migrations" not in path.parts
    }
    assert {file: names for file, names in upward.items() if names} == {}
