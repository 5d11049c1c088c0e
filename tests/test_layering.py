"""The packages' layering (docs/design.md): `lavit_hf` is the ground floor, the three step packages stand on it and not
on one another, and nothing imports the `lavit_cli` application."""

import ast
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lavit_hf", "datasets_scripts", "trainer", "evaluate_metrics", "lavit_cli")
# What each package may import of the others.
ALLOWED = {
    "lavit_hf": set(),
    "datasets_scripts": {"lavit_hf"},
    "trainer": {"lavit_hf"},
    "evaluate_metrics": {"lavit_hf"},
    "lavit_cli": {"lavit_hf", "datasets_scripts", "trainer", "evaluate_metrics"},
}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_the_floors_below_it(package):
    offences = {
        str(path.relative_to(ROOT)): sorted(imported - ALLOWED[package] - {package})
        for path in sorted((ROOT / package).rglob("*.py"))
        if (imported := imported_packages(path)) - ALLOWED[package] - {package}
    }
    assert not offences, f"{package} imports above its floor: {offences}"
