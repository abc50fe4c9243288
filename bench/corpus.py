"""Derive a registry-sized corpus from the 326 real records, written as bulk zips.

``python -m bench.corpus --size N --out DIR`` writes ``DIR/base.zip`` (N distinct studies, laid out like
the registry's ``ctg-studies.json.zip``: ``NN/NCT########.json``, NN = the id's last two digits) and
``DIR/changed.zip`` (the same studies with 2% materially changed and re-posted later; every other
member byte-identical), plus ``DIR/corpus.json`` (sizes, seed, which ids changed).

Each study is a real record with: a new NCT id, every status date shifted by the same number of days
(precision kept), an overall status drawn from the registry's mix, sites swapped for other real sites,
words of its free text rotated, a different enrollment count. Structure is never invented: values are
rearranged or taken from other real records. Deterministic for a given seed. The two zips are written
by two processes (one per core); JSON is compact, as the registry's 17 KB average implies.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import time
import zipfile
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

from pipeline import mutate

Record = dict[str, Any]
SEED = 8
CHANGED_SHARE = 0.02
# Roughly the registry's status mix (most studies are closed; recent ones recruit).
STATUS_MIX = [("COMPLETED", 40), ("UNKNOWN", 14), ("RECRUITING", 12), ("TERMINATED", 6), ("ACTIVE_NOT_RECRUITING", 6),
              ("NOT_YET_RECRUITING", 4), ("WITHDRAWN", 3), ("ENROLLING_BY_INVITATION", 2), ("SUSPENDED", 1)]
STOPPED = {"TERMINATED", "WITHDRAWN", "SUSPENDED"}
TEXT_FIELDS = [("identificationModule", "officialTitle"), ("descriptionModule", "briefSummary"),
               ("descriptionModule", "detailedDescription"), ("eligibilityModule", "eligibilityCriteria")]
ZIP_DATE = (2026, 8, 3, 0, 0, 0)


def nct_for(index: int) -> str:
    """A distinct NCT id per index (7919 is prime to 10^8, so this is a bijection)."""
    return f"NCT{(index * 7919 + 102) % 10**8:08d}"


def member_name(nct: str) -> str:
    return f"{nct[-2:]}/{nct}.json"


class Pools:
    """Real values to draw from: the templates (as bytes: loading gives a fresh copy), sites, reasons."""

    def __init__(self, studies_dir: Path) -> None:
        records = [orjson.loads(p.read_bytes()) for p in sorted(studies_dir.glob("NCT*.json"))]
        self.templates = [orjson.dumps(r) for r in records]
        self.sites = [site for r in records
                      for site in r["protocolSection"].get("contactsLocationsModule", {}).get("locations", [])]
        self.why_stopped = sorted({r["protocolSection"]["statusModule"]["whyStopped"] for r in records
                                   if "whyStopped" in r["protocolSection"]["statusModule"]})


def derive(pools: Pools, index: int, seed: int = SEED) -> Record:
    """Study ``index`` of the corpus: a varied copy of a real record."""
    rng = random.Random(f"{seed}:{index}")
    record: Record = orjson.loads(pools.templates[index % len(pools.templates)])
    protocol = record["protocolSection"]
    ident = protocol["identificationModule"]
    ident["nctId"] = nct_for(index)
    if "orgStudyIdInfo" in ident:
        ident["orgStudyIdInfo"]["id"] = f"{ident['orgStudyIdInfo'].get('id', 'ID')}-{index}"
    status = protocol["statusModule"]
    _shift_dates(status, -rng.randrange(0, 3650))
    status["overallStatus"] = rng.choices([s for s, _ in STATUS_MIX], [w for _, w in STATUS_MIX])[0]
    if status["overallStatus"] in STOPPED and "whyStopped" not in status:
        status["whyStopped"] = rng.choice(pools.why_stopped)
    for module, field in TEXT_FIELDS:
        text = protocol.get(module, {}).get(field)
        if isinstance(text, str):
            words = text.split(" ")
            cut = rng.randrange(len(words))
            protocol[module][field] = " ".join(words[cut:] + words[:cut])
    enrollment = protocol.get("designModule", {}).get("enrollmentInfo")
    if enrollment and isinstance(enrollment.get("count"), int):
        enrollment["count"] = max(1, int(enrollment["count"] * rng.uniform(0.5, 2.0)))
    sites = protocol.get("contactsLocationsModule", {}).get("locations")
    if sites:
        for n in range(len(sites)):
            if rng.random() < 0.5:
                sites[n] = rng.choice(pools.sites)
    return record


def change(record: Record, index: int, seed: int = SEED) -> Record:
    """A material update of a derived study, as the registry would post it days later."""
    rng = random.Random(f"{seed}:change:{index}")
    kind = index % 4
    if kind == 0:
        current = record["protocolSection"]["statusModule"].get("overallStatus")
        record = mutate.set_status(record, "ACTIVE_NOT_RECRUITING" if current != "ACTIVE_NOT_RECRUITING"
                                   else "COMPLETED")
    elif kind == 1 and "completionDateStruct" in record["protocolSection"]["statusModule"]:
        record = mutate.shift_date(record, "completionDate", rng.randrange(30, 365))
    elif kind == 2 and record["protocolSection"].get("designModule", {}).get("enrollmentInfo"):
        record = mutate.set_enrollment(record, rng.randrange(10, 2000), "ACTUAL")
    else:
        record = mutate.set_status(record, "TERMINATED", why_stopped="Slow recruitment")
    posted = date.fromisoformat(record["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])
    return mutate.posted_on(record, posted + timedelta(days=rng.randrange(1, 60)))


def is_changed(index: int, seed: int = SEED, share: float = CHANGED_SHARE) -> bool:
    return random.Random(f"{seed}:pick:{index}").random() < share


def _shift_dates(status: dict[str, Any], days: int) -> None:
    for key, value in status.items():
        if key.endswith("DateStruct") and isinstance(value, dict) and isinstance(value.get("date"), str):
            value["date"] = _shift(value["date"], days)
        elif key.endswith("Date") and isinstance(value, str):
            status[key] = _shift(value, days)


def _shift(raw: str, days: int) -> str:
    parts = raw.split("-")
    moved = date(int(parts[0]), int(parts[1]) if len(parts) > 1 else 1,
                 int(parts[2]) if len(parts) > 2 else 1) + timedelta(days=days)
    return moved.isoformat()[: len(raw)]


def ordered_indices(size: int) -> list[int]:
    """Members in the registry's order: by folder (last two digits), then by id."""
    return sorted(range(size), key=lambda i: (nct_for(i)[-2:], nct_for(i)))


def iter_members(pools: Pools, size: int, *, changed: bool, seed: int = SEED) -> Iterator[tuple[str, bytes]]:
    for index in ordered_indices(size):
        record = derive(pools, index, seed)
        if changed and is_changed(index, seed):
            record = change(record, index, seed)
        yield member_name(nct_for(index)), orjson.dumps(record)


def write_zip(studies_dir: Path, size: int, path: Path, changed: bool, seed: int, level: int) -> int:
    """Write one corpus zip (atomically); returns the uncompressed bytes."""
    pools = Pools(studies_dir)
    total = 0
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for name, data in iter_members(pools, size, changed=changed, seed=seed):
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=level)
            total += len(data)
    os.replace(tmp, path)
    return total


def generate(studies_dir: Path, size: int, out: Path, *, seed: int = SEED, level: int = 6) -> dict[str, Any]:
    """base.zip and changed.zip in parallel (one process each); corpus.json describes them."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    jobs = [(studies_dir, size, out / "base.zip", False, seed, level),
            (studies_dir, size, out / "changed.zip", True, seed, level)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        base_bytes, changed_bytes = pool.starmap(write_zip, jobs)
    changed_ids = [nct_for(i) for i in range(size) if is_changed(i, seed)]
    info = {"size": size, "seed": seed, "compresslevel": level, "json_bytes": base_bytes,
            "zip_bytes": (out / "base.zip").stat().st_size, "changed_json_bytes": changed_bytes,
            "changed": len(changed_ids), "changed_ids": changed_ids[:1000],
            "seconds": round(time.monotonic() - started, 1)}
    (out / "corpus.json").write_text(json.dumps(info, indent=1))
    return info


def ensure(studies_dir: Path, size: int, out: Path, *, seed: int = SEED) -> dict[str, Any]:
    """Reuse a corpus already generated with the same size and seed."""
    meta = out / "corpus.json"
    if meta.exists() and (out / "base.zip").exists() and (out / "changed.zip").exists():
        info: dict[str, Any] = json.loads(meta.read_text())
        if info.get("size") == size and info.get("seed") == seed:
            return info
    return generate(studies_dir, size, out, seed=seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--level", type=int, default=6, help="deflate level (the registry's zip: default 6)")
    args = parser.parse_args(argv)
    info = generate(args.data / "ctgov" / "studies", args.size, args.out, seed=args.seed, level=args.level)
    info.pop("changed_ids")
    json.dump(info, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
