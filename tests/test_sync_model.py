"""Random sequences of registry days and sync runs against a model of what the registry said.

A hypothesis state machine edits real records (status, enrollment, dates, sites, outcomes), removes
and restores studies, leaves studies out of listings (the registry's gaps) and serves stale copies.
Each day ends in a full, incremental or `--ids` sync of the real flow over loopback, or a load of the
registry's bulk zip, into a real warehouse. After every run it checks the invariants of SPEC.md that
users rely on, whatever came before: versions never overlap and are numbered 1..n with one current;
a study is removed only when the registry no longer has it; every stored version after the first has
the change rows that explain it; a run that fetched a study leaves its current version equal to what
the registry serves (unless that copy is stale), and a full run retires what the registry removed.
At the end of each sequence, `rederive` finds the changes the runs stored and a compaction keeps
every version and change.
"""

from __future__ import annotations

import copy
import itertools
import json
import zipfile
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import orjson
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from flows.bulk import load_bulk
from flows.compact import compact_warehouse
from flows.derive import rederive_changes
from pipeline import mutate
from pipeline.hashing import content_hash
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import examples, fast_sync, nct, real_records
from warehouse.store import Warehouse

STUDIES = 4
STATUSES = ("RECRUITING", "ACTIVE_NOT_RECRUITING", "COMPLETED", "TERMINATED", "SUSPENDED", "WITHDRAWN")
EDITS = ("status", "enrollment", "completion", "site_status", "site_removed", "outcome", "touch")
FIRST_DAY = date(2026, 3, 2)
EVENTS = st.tuples(st.sampled_from(("posts_an_update", "posts_an_update", "serves_a_stale_copy", "removes_a_study",
                                    "restores_a_study", "leaves_it_out_of_listings", "lists_everything_again")),
                   st.integers(0, STUDIES - 1), st.sampled_from(EDITS), st.integers(0, 9))


def _chosen_records() -> list[dict[str, Any]]:
    """Real records with sites, outcomes and an enrollment: every edit below applies to each."""
    def usable(record: dict[str, Any]) -> bool:
        protocol = record["protocolSection"]
        return (len(protocol.get("contactsLocationsModule", {}).get("locations", [])) >= 2
                and bool(protocol.get("outcomesModule", {}).get("primaryOutcomes"))
                and "enrollmentInfo" in protocol.get("designModule", {})
                and "completionDateStruct" in protocol["statusModule"])
    chosen = sorted((r for r in real_records() if usable(r)), key=nct)[:STUDIES]
    assert len(chosen) == STUDIES
    return [mutate.posted_on(r, FIRST_DAY) for r in chosen]


def _edited(record: dict[str, Any], edit: str, amount: int) -> dict[str, Any]:
    """The record with one material change (relative to its own values, so never a no-op); "touch" is none."""
    protocol = record["protocolSection"]
    if edit == "status":
        others = [s for s in STATUSES if s != protocol["statusModule"].get("overallStatus")]
        return mutate.set_status(record, others[amount % len(others)])
    if edit == "enrollment":
        count = protocol["designModule"]["enrollmentInfo"].get("count", 0)
        return mutate.set_enrollment(record, count + 1 + amount * 7)
    if edit == "completion":
        return mutate.shift_date(record, "completionDate", (amount + 1) * 45 * (1 if amount % 2 else -1))
    sites = protocol["contactsLocationsModule"]["locations"]
    if edit == "site_status":
        index = amount % len(sites)
        others = [s for s in ("RECRUITING", "COMPLETED", "WITHDRAWN") if s != sites[index].get("status")]
        return mutate.set_site_status(record, index, others[amount % len(others)])
    if edit == "site_removed":  # the last site stays
        return mutate.remove_site(record, amount % len(sites)) if len(sites) > 1 else copy.deepcopy(record)
    if edit == "outcome":
        measure = protocol["outcomesModule"]["primaryOutcomes"][0].get("measure", "")
        return mutate.set_primary_outcome_measure(record, 0, f"{measure} (revision {amount})")
    return copy.deepcopy(record)  # "touch": only the registry's dates move


def _registry_date(record: dict[str, Any]) -> date:
    return date.fromisoformat(record["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])


class SyncModel(RuleBasedStateMachine):
    """The registry side is the model; the warehouse is checked against it after each run."""

    root = Path()  # where each sequence's warehouse goes (the test's tmp_path)
    numbers = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.base = {nct(r): r for r in _chosen_records()}
        self.ids = sorted(self.base)
        self.published: dict[str, dict[str, Any]] = dict(self.base)  # what GET /studies/{id} serves
        self.latest: dict[str, dict[str, Any]] = dict(self.base)  # the newest copy the registry ever had
        self.gaps: set[str] = set()
        self.day = FIRST_DAY
        self.runs = 0
        self.ever_removed: set[str] = set()
        self.registry = FakeRegistry(self.base.values()).start()
        self.directory = self.root / f"warehouse-{next(self.numbers)}"

    def _next_day(self) -> date:
        self.day += timedelta(days=1)
        return self.day

    @initialize()
    def first_full_sync(self) -> None:
        self._sync(full=True)

    @rule(events=st.lists(EVENTS, max_size=4), kind=st.sampled_from(("full", "incremental", "ids", "bulk")),
          study=st.integers(0, STUDIES - 1))
    def a_registry_day_then_a_sync(self, events: list[tuple[str, int, str, int]], kind: str, study: int) -> None:
        for event, index, edit, amount in events:
            getattr(self, f"_registry_{event}")(self.ids[index], edit, amount)
        if kind == "full":
            self._sync(full=True)
            self._check_full_run()
        elif kind == "incremental":
            self._sync()
        elif kind == "bulk":  # the registry's zip of what it serves today; it retires nothing
            self._load_bulk()
            for nct_id in self.published:
                self._check_head(nct_id)
        else:
            self._sync(ids=[self.ids[study]])
            if self.ids[study] in self.published:
                self._check_head(self.ids[study])

    def _registry_posts_an_update(self, nct_id: str, edit: str, amount: int) -> None:
        if nct_id in self.published:
            record = mutate.posted_on(_edited(self.latest[nct_id], edit, amount), self._next_day())
            self.published[nct_id] = self.latest[nct_id] = record
            self.registry.put(record)

    def _registry_serves_a_stale_copy(self, nct_id: str, edit: str, amount: int) -> None:
        """A lagging replica: other content, dated before what the warehouse already holds (stale to it:
        the newest update may not have been fetched yet, so the registry's newest date is not enough)."""
        if nct_id in self.published:
            stored = [r["registry_updated"] for r in self._versions().get(nct_id, []) if r["registry_updated"]]
            newest = _registry_date(self.latest[nct_id])
            older = min(newest, max(stored, default=newest)) - timedelta(days=3)
            stale = mutate.posted_on(_edited(self.latest[nct_id], "enrollment", amount + 100), older)
            self.published[nct_id] = stale
            self.registry.put(stale)

    def _registry_removes_a_study(self, nct_id: str, edit: str, amount: int) -> None:
        if nct_id in self.published and len(self.published) > 1:
            del self.published[nct_id]
            self.ever_removed.add(nct_id)
            self.registry.remove(nct_id)

    def _registry_restores_a_study(self, nct_id: str, edit: str, amount: int) -> None:
        if nct_id not in self.published:
            record = mutate.posted_on(self.latest[nct_id], self._next_day())
            self.published[nct_id] = self.latest[nct_id] = record
            self.registry.put(record)

    def _registry_leaves_it_out_of_listings(self, nct_id: str, edit: str, amount: int) -> None:
        self.gaps.add(nct_id)
        self.registry.omit_from_listings(*sorted(self.gaps))

    def _registry_lists_everything_again(self, nct_id: str, edit: str, amount: int) -> None:
        self.gaps.clear()
        self.registry.restore_listings()

    def teardown(self) -> None:
        self.registry.stop()
        if self.runs:
            self._rederive_finds_the_changes_the_runs_found()
            self._compaction_keeps_every_version_and_change()

    def _rederive_finds_the_changes_the_runs_found(self) -> None:
        """Changes derived again from the stored raw versions are the ones the runs stored."""
        before = self._changes()
        rederive_changes(warehouse=str(self.directory), lock_timeout=5.0)
        assert self._changes() == before

    def _compaction_keeps_every_version_and_change(self) -> None:
        before = (self._versions(), self._changes())
        compact_warehouse(warehouse=str(self.directory), keep_hours=0.0, lock_timeout=5.0)
        assert (self._versions(), self._changes()) == before

    def _load_bulk(self) -> None:
        archive = self.directory.parent / f"{self.directory.name}-{self.runs}.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for nct_id, record in sorted(self.published.items()):
                zf.writestr(f"{nct_id[-2:]}/{nct_id}.json", orjson.dumps(record))
        summary = load_bulk(str(archive), warehouse=str(self.directory), lock_timeout=5.0)
        assert summary["run_id"] and summary["quarantined"] == 0, summary
        self.runs += 1

    def _changes(self) -> list[tuple[Any, ...]]:
        with Warehouse(self.directory).connect() as con:
            return con.execute(
                "SELECT nct_id, from_version, to_version, path, event, old_value, new_value, severity, shift_days, "
                "pct_change FROM changes ORDER BY ALL").fetchall()

    def _sync(self, **kwargs: Any) -> None:
        summary = fast_sync(self.registry, self.directory, **kwargs)
        assert summary["run_id"] and summary["quarantined"] == 0, summary
        self.runs += 1

    def _versions(self) -> dict[str, list[dict[str, Any]]]:
        with Warehouse(self.directory).connect() as con:
            result = con.execute(
                "SELECT nct_id, version, valid_from, valid_to, is_current, is_removed, content_hash, "
                "registry_updated, observed_at, run_id, raw FROM study_versions ORDER BY nct_id, version")
            columns = [d[0] for d in result.description]
            rows = [dict(zip(columns, row, strict=True)) for row in result.fetchall()]
        by_study: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_study.setdefault(row["nct_id"], []).append(row)
        return by_study

    def _head(self, nct_id: str) -> dict[str, Any]:
        return self._versions()[nct_id][-1]

    def _check_head(self, nct_id: str) -> None:
        """After a run that fetched it: the head is what the registry serves, unless that copy is stale."""
        head = self._head(nct_id)
        served = self.published[nct_id]
        if served is self.latest[nct_id]:
            assert not head["is_removed"], (nct_id, "retired though the registry serves it")
            assert head["content_hash"] == content_hash(served), (nct_id, "head is not the registry's copy")
        else:  # a stale copy never becomes the head (a retired study served stale stays retired)
            assert head["content_hash"] != content_hash(served), (nct_id, "a stale copy became the head")

    def _check_full_run(self) -> None:
        versions = self._versions()
        for nct_id in self.ids:
            if nct_id in self.published:
                self._check_head(nct_id)
            else:
                assert versions[nct_id][-1]["is_removed"], (nct_id, "the registry removed it; the run did not")

    @invariant()
    def versions_never_overlap_and_one_is_current(self) -> None:
        if not self.runs:
            return
        for nct_id, rows in self._versions().items():
            assert [r["version"] for r in rows] == list(range(1, len(rows) + 1)), nct_id
            assert [r["is_current"] for r in rows] == [False] * (len(rows) - 1) + [True], nct_id
            for earlier, later in itertools.pairwise(rows):
                assert earlier["valid_to"] is not None and earlier["valid_from"] < earlier["valid_to"], (nct_id, rows)
                assert earlier["valid_to"] <= later["valid_from"], (nct_id, rows)
            assert rows[-1]["valid_to"] is None, nct_id

    @invariant()
    def a_study_is_removed_only_when_the_registry_removed_it(self) -> None:
        if not self.runs:
            return
        for nct_id, rows in self._versions().items():
            if any(r["is_removed"] for r in rows):
                assert nct_id in self.ever_removed, (nct_id, "retired though the registry never removed it")

    @invariant()
    def every_later_version_has_the_changes_that_explain_it(self) -> None:
        if not self.runs:
            return
        with Warehouse(self.directory).connect() as con:
            explained = set(con.execute("SELECT DISTINCT nct_id, to_version FROM changes").fetchall())
            ids = [r[0] for r in con.execute("SELECT change_id FROM changes").fetchall()]
        assert len(ids) == len(set(ids)), "a change id is stored twice"
        for nct_id, rows in self._versions().items():
            for row in rows[1:]:
                assert (nct_id, row["version"]) in explained, (nct_id, row["version"], "a version without changes")


@pytest.mark.usefixtures("prefect_api")
def test_random_registry_days_keep_every_invariant_of_the_version_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not shrunk here (each step is a real run: shrinking takes many minutes); a failure prints its
    steps. To shrink one, run this test alone with Phase.shrink added."""
    monkeypatch.setattr(SyncModel, "root", tmp_path)
    run = SyncModel.TestCase
    run.settings = settings(max_examples=examples(3, 40), stateful_step_count=8, deadline=None,
                            suppress_health_check=list(HealthCheck), derandomize=True, database=None,
                            phases=[Phase.explicit, Phase.generate])
    run().runTest()


def test_the_model_edits_make_material_changes() -> None:
    """Each edit (but "touch") changes the content hash of every chosen record: the model tests something."""
    for record in _chosen_records():
        for edit, amount in itertools.product(EDITS, range(10)):
            edited = _edited(record, edit, amount)
            assert (content_hash(edited) != content_hash(record)) == (edit != "touch"), (nct(record), edit, amount)
        assert json.dumps(_edited(record, "touch", 3), sort_keys=True) == json.dumps(record, sort_keys=True)
