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


# Inside `pipelines`: a pipeline package (one holding a `pipeline.py`: pet, ct, histology, ...) imports the shared
# packages and modules of `pipelines` (imaging, output, omics, petlesions, registry, types, ...) but no other
# pipeline package; the shared ones import no pipeline package. Only `pipelines/builtin.py`, the registry of the
# pipelines every node runs, imports them all.
PIPELINES = REPO / "pipelines"
REGISTERING = {PIPELINES / "builtin.py"}


def _pipeline_packages() -> set[str]:
    return {path.parent.name for path in PIPELINES.glob("*/pipeline.py")}


def _imported_pipelines_modules(path: Path) -> set[str]:
    """The second part of every `pipelines.<x>` this file imports (`from pipelines import x` included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] if "." in node.module else [f"{node.module}.{a.name}" for a in node.names]
        found |= {m.split(".")[1] for m in modules if m.startswith("pipelines.")}
    return found


def test_every_registered_pipeline_is_a_pipeline_package() -> None:
    """The rule below finds pipeline packages by their `pipeline.py`: each registered pipeline lives in one."""
    from pipelines.builtin import BUILTIN

    homes = {type(p).__module__ for p in BUILTIN.pipelines}
    assert homes == {f"pipelines.{package}.pipeline" for package in _pipeline_packages()}


def test_pipelines_do_not_import_each_other() -> None:
    packages = _pipeline_packages()
    sibling = {}
    for path in PIPELINES.rglob("*.py"):
        if path in REGISTERING:
            continue
        parts = path.relative_to(PIPELINES).parts
        own = parts[0] if len(parts) > 1 and parts[0] in packages else None
        found = sorted((_imported_pipelines_modules(path) & packages) - {own})
        if found:
            sibling[str(path.relative_to(REPO))] = found
    assert sibling == {}
