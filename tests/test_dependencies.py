"""Every third-party module the code imports is a declared dependency.

A module importable in a developer's environment through some other package's dependency (scikit-image
once was) is missing on a fresh machine: CI failed on collection. This test reads the imports of every
source file and checks that the distribution providing each is named in pyproject.toml.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = ("immunode", "common", "dicom_node", "pipelines", "models", "research", "storage")
OWN = set(SOURCE_PACKAGES) | {"tests", "benchmarks"}


def _imported_top_levels(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _declared(group: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[; ]", item, maxsplit=1)[0].lower().replace("_", "-") for item in group}


def _undeclared(folders: list[Path], declared: set[str]) -> dict[str, list[str]]:
    providers = packages_distributions()
    missing: dict[str, list[str]] = {}
    for name in sorted(set().union(*(_imported_top_levels(folder) for folder in folders))):
        if name in OWN or name in sys.stdlib_module_names:
            continue
        distributions = {d.lower().replace("_", "-") for d in providers.get(name, [])}
        if not distributions & declared:
            missing[name] = sorted(distributions) or ["(not installed)"]
    return missing


def test_every_imported_module_of_the_node_is_a_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = _declared(project["dependencies"])
    assert _undeclared([ROOT / name for name in SOURCE_PACKAGES], declared) == {}


def test_every_imported_module_of_the_tests_is_declared_for_tests() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = _declared(project["dependencies"]) | _declared(project["optional-dependencies"]["test"])
    assert _undeclared([ROOT / "tests", ROOT / "benchmarks"], declared) == {}
