"""The README's reliability figures are the suite's own: each is counted from the tests here."""

from __future__ import annotations

import re
from types import ModuleType

import pytest

from tests.conftest import REPO
from tests.reliability import test_concurrency, test_crash, test_edges, test_faults, test_resume
from warehouse.crashpoints import CHECKPOINTS

pytestmark = pytest.mark.reliability


def _test_names(module: ModuleType) -> list[str]:
    return [name for name in vars(module) if name.startswith("test_")]


def test_the_readme_states_the_figures_the_full_suite_proves() -> None:
    readme = REPO.joinpath("README.md").read_text().split("\n## Reliability\n", 1)[1].split("\n## ", 1)[0]
    figures = {int(n): what for n, what in re.findall(r"\*\*(\d+) ([a-z0-9. ]+?)\*\*", readme.replace("\n  ", " "))}
    transient = len(test_faults.TRANSIENT_FAULTS)
    other_faults = len(_test_names(test_faults)) - 1  # all but the parametrised transient-fault test
    env_test = test_edges.test_urls_and_paths_from_the_environment_are_checked_before_anything_runs
    env_cases = len(next(m for m in env_test.pytestmark if m.name == "parametrize").args[1])
    assert figures == {
        len(test_crash.KILL_POINTS): "kill points",
        len(CHECKPOINTS): "checkpoints",
        transient + other_faults: "registry fault cases",
        3: "syncs started at once",
        len(test_edges.BAD_INPUT) + env_cases: "bad inputs",
        len(test_edges.READ_ONLY) + len(test_edges.OUTSIDE): "statements",
        len(_test_names(test_resume)): "resume cases",
    }
    assert test_concurrency.CONCURRENT_SYNCS == 3 or not test_concurrency.FULL
