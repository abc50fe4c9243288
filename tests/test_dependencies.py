"""Every third-party module the installed code imports (pipeline/, warehouse/, flows/) is a declared
runtime dependency in pyproject.toml, and every runtime dependency is pinned in constraints.txt (the
set `make` installs). A module that only the dev extra brings (psutil was one: flows/lifecycle.py
needs it to reap children) would be missing from a plain `pip install trialsync`."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_PACKAGES = ("pipeline", "warehouse", "flows")


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[;\s]", requirement.strip(), maxsplit=1)[0]).lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imported_top_modules() -> dict[str, str]:
    """Top-level module name -> one file importing it, over the runtime packages."""
    found: dict[str, str] = {}
    for package in RUNTIME_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_of_the_installed_code_is_a_declared_runtime_dependency() -> None:
    declared = {_name(r) for r in _project()["dependencies"]}
    distributions = packages_distributions()
    missing = []
    for module, where in sorted(_imported_top_modules().items()):
        if module in sys.stdlib_module_names or module in RUNTIME_PACKAGES or module == "__future__":
            continue
        dists = {_name(d) for d in distributions.get(module, [])}
        assert dists, f"{where} imports {module}, which no installed distribution provides"
        if not dists & declared:
            missing.append(f"{module} (from {sorted(dists)}, imported by {where})")
    assert missing == [], f"imported at run time but not in [project].dependencies: {missing}"


def test_psutil_is_a_runtime_dependency_not_only_a_dev_one() -> None:
    project = _project()
    assert "psutil" in {_name(r) for r in project["dependencies"]}
    assert "psutil" not in {_name(r) for r in project["optional-dependencies"]["dev"]}


def test_every_runtime_dependency_is_pinned_in_the_constraints_make_installs() -> None:
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_name(name)] = version.strip()
    unpinned = [r for r in _project()["dependencies"] if _name(r) not in pins]
    assert unpinned == [], f"runtime dependencies without a pin in constraints.txt: {unpinned}"
