"""The reliability suite reports what it proved in this session (kill points, fault cases, ...)."""

from __future__ import annotations

from typing import Any

FAMILIES = {
    "kill points (sync SIGKILLed, warehouse intact, re-run converged)": "test_crash.py::test_a_sync_killed",
    "registry fault cases": "test_faults.py::",
    "concurrency cases": "test_concurrency.py::",
    "resume cases": "test_resume.py::",
    "misuse cases (bad input, read-only SQL, URLs, paths, secrets)": "test_edges.py::",
}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    passed = [r.nodeid for r in terminalreporter.stats.get("passed", []) if r.when == "call"]
    counts = {name: sum(1 for node in passed if marker in node) for name, marker in FAMILIES.items()}
    if any(counts.values()):
        terminalreporter.write_sep("-", "reliability: what passed in this session")
        for name, count in counts.items():
            terminalreporter.write_line(f"{count:4d} {name}")
