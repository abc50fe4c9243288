"""The benchmark: trialsync's bulk load vs the JSON parse floor vs dlt, on one generated corpus.

``python -m bench.run --size N`` (``make bench N=...``):
1. derives N studies from the real records into ``bench/out/corpus-N/{base,changed}.zip`` (reused);
2. the parse floor: ``bench.floor`` (zipfile + orjson, one process);
3. trialsync, as a user runs it: ``trialsync load-bulk base.zip`` into a fresh warehouse (initial),
   again (no-op resync), then ``changed.zip`` (2% changed);
4. the head index's memory at that size (columnar vs a dict);
5. where a shard's time goes (cProfile by stage);
6. the peer: dlt ``merge``/``scd2`` into DuckDB, in its own venv, on the first ``--peer-limit`` studies of
   the same corpus (dlt runs ~100 records/s: the whole corpus would take hours), same three loads;
and writes the measured section of ``--results`` (default ``bench/RESULTS.md``). Each step runs in
its own process; wall time and the peak RSS of its whole process tree (sampled every 50 ms) are
recorded. Prefect: the ``PREFECT_API_URL`` in the environment, else a server started for the run (so
no step pays a temporary server's start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench import corpus

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DLT_VERSION = "1.31.0"
PEER_CONFIGS = {"dlt (nested: child tables)": None, "dlt (max_table_nesting=0)": 0}
BEGIN, END = "<!-- measured:begin -->", "<!-- measured:end -->"


@dataclass
class Step:
    name: str
    seconds: float
    peak_rss_mb: float
    output: dict[str, Any] = field(default_factory=dict)
    load_before: float = 0.0
    cpu_seconds: float = 0.0  # user + system of the step's processes (all reaped when it ends)


def measure(name: str, cmd: list[str], env: dict[str, str] | None = None, timeout: float = 36000) -> Step:
    """Run ``cmd``; wall time and the peak summed RSS of its process tree."""
    load = os.getloadavg()[0]
    cpu_before = _children_cpu()
    started = time.monotonic()
    # Output goes to files, not pipes: a command that writes more than a pipe holds would block.
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(cmd, stdout=out_file, stderr=err_file, text=True, env={**os.environ, **(env or {})})
        peak = _peak_rss_until_exit(proc, started, timeout)
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    seconds = time.monotonic() - started
    cpu = _children_cpu() - cpu_before
    if proc.returncode != 0:
        raise SystemExit(f"bench step {name!r} failed ({proc.returncode}): {err.strip()[-2000:]}")
    last = [line for line in out.splitlines() if line.startswith("{")]
    return Step(name, round(seconds, 2), round(peak / 2**20, 1), json.loads(last[-1]) if last else {}, load,
                round(cpu, 1))


def _peak_rss_until_exit(proc: subprocess.Popen[str], started: float, timeout: float) -> int:
    peak = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(_rss(p) for p in tree))
        except psutil.Error:
            pass
        if time.monotonic() - started > timeout:
            proc.kill()
        time.sleep(0.05)
    return peak


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.Error:
        return 0


@contextmanager
def prefect_server(workdir: Path) -> Iterator[str]:
    """The configured Prefect API, or a local server for the length of the benchmark."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = workdir / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    log = (workdir / "prefect-server.log").open("w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("bench: the Prefect server did not start (see prefect-server.log)") from None
                time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own process group, started above
        server.wait(timeout=60)
        log.close()


def dlt_python(venv: Path) -> Path:
    """The peer's own venv (created once, reused)."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        f"dlt[duckdb]=={DLT_VERSION}"], check=True)
    return python


def run_trialsync(zips: dict[str, Path], workdir: Path, api: str, workers: int | None) -> list[Step]:
    warehouse = workdir / "warehouse"
    shutil.rmtree(warehouse, ignore_errors=True)
    env = {"PREFECT_API_URL": api, "PREFECT_LOGGING_LEVEL": "WARNING"}
    steps = []
    for name, source in (("initial load", zips["base"]), ("no-op resync", zips["base"]),
                         ("2%-changed resync", zips["changed"])):
        cmd = [str(BIN / "trialsync"), "load-bulk", str(source), "--warehouse", str(warehouse), "--quiet"]
        if workers:
            cmd += ["--workers", str(workers)]
        steps.append(measure(name, cmd, env))
    runs = subprocess.run([str(BIN / "trialsync"), "runs", "--format", "json", "--warehouse", str(warehouse)],
                          capture_output=True, text=True, check=True)
    for step, run in zip(steps, reversed(json.loads(runs.stdout)), strict=True):  # listed newest first
        step.output = run
    return steps


def run_peer(python: Path, zips: dict[str, Path], workdir: Path, limit: int, nesting: int | None) -> list[Step]:
    target = workdir / f"dlt-nesting-{nesting if nesting is not None else 'default'}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    steps = []
    for name, source in (("initial load", zips["base"]), ("no-op resync", zips["base"]),
                         ("2%-changed resync", zips["changed"])):
        cmd = [str(python), str(REPO / "bench" / "peer_dlt.py"), "--zip", str(source), "--limit", str(limit),
               "--db", str(target / "peer.duckdb"), "--pipelines-dir", str(target / "pipelines")]
        if nesting is not None:
            cmd += ["--nesting", str(nesting)]
        steps.append(measure(name, cmd, {"RUNTIME__DLTHUB_TELEMETRY": "false"}))
    return steps


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    versions = {name: metadata.version(name) for name in
                ("prefect", "duckdb", "pyarrow", "orjson", "msgspec", "deflate", "prefect-dask", "dask")}
    return {"cpu": f"{cpu}, {os.cpu_count()} cores", "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
            "os": platform.platform(), "python": platform.python_version(),
            "trialsync": f"{commit}{' (uncommitted changes)' if dirty else ''}",
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items()) + f", dlt {DLT_VERSION} (own venv)"}


def rate(records: int, seconds: float) -> float:
    return records / seconds if seconds else 0.0


def report(args: argparse.Namespace, info: dict[str, Any], floor: Step, ours: list[Step],
           heads: Step, profile: Step | None, peers: dict[str, list[Step]], started: datetime) -> str:
    n = info["size"]
    env = machine()
    lines = [BEGIN, "",
             f"Measured {started:%Y-%m-%d %H:%M} UTC by `python -m bench.run --size {n}"
             f"{f' --peer-limit {args.peer_limit}' if peers else ' --no-peer'}`.", "",
             f"- Machine: {env['cpu']}, {env['memory']}, {env['os']}, Python {env['python']}; "
             f"1-minute load average before each step in the tables (the machine is shared: a load above "
             f"~2 means other jobs were taking CPU from the measured step).",
             f"- trialsync {env['trialsync']}; {env['versions']}.",
             f"- Corpus: {n:,} studies derived from the 326 real records, {info['json_bytes'] / 1e9:.2f} GB of JSON "
             f"({info['json_bytes'] / n / 1e3:.1f} KB a study), {info['zip_bytes'] / 1e9:.2f} GB zipped; "
             f"`changed.zip` has {info['changed']:,} ({info['changed'] / n:.1%}) studies materially changed.", "",
             f"### trialsync `load-bulk` ({n:,} studies)", "",
             "| step | seconds | studies/s | MB/s of JSON | peak RSS (MB, whole tree) | new versions | unchanged "
             "| load avg | CPU seconds | CPU ÷ 2 cores |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for step in ours:
        out = step.output
        lines.append(f"| {step.name} | {step.seconds:.1f} | {rate(n, step.seconds):,.0f} | "
                     f"{info['json_bytes'] / 1e6 / step.seconds:,.0f} | {step.peak_rss_mb:,.0f} | "
                     f"{out.get('versions', '?')} | {out.get('unchanged', '?')} | {step.load_before:.1f} | "
                     f"{step.cpu_seconds:.0f} | {step.cpu_seconds / 2:.0f} |")
    lines += ["", "Each step is the whole command as a user runs it (Python start-up, reading the archive's "
              "directory, the head index, the shard tasks in 2 worker processes (one per folder at the registry's "
              "size, folders grouped to >= 2,000 studies below it), the commit); `secs` inside the "
              "run (sync_runs) exclude only process start-up: "
              + ", ".join(f"{s.name} {s.output.get('secs', '?')} s" for s in ours) + ".", "",
              "### The parse floor (zipfile + orjson.loads of every member, one process)", "",
              "| seconds | studies/s | MB/s | peak RSS (MB) | load avg | CPU seconds | trialsync initial ÷ floor |",
              "|---:|---:|---:|---:|---:|---:|---:|",
              f"| {floor.seconds:.1f} | {rate(n, floor.seconds):,.0f} "
              f"| {info['json_bytes'] / 1e6 / floor.seconds:,.0f} | {floor.peak_rss_mb:,.0f} "
              f"| {floor.load_before:.1f} | {floor.cpu_seconds:.0f} | {ours[0].seconds / floor.seconds:.2f}× |", ""]
    o = heads.output
    lines += ["### The head index at this size (one entry per study)", "",
              "| studies | query seconds | query's peak RSS growth (MB, transient) | columnar index (MB) "
              "| as a dict of `Head` (MB) |", "|---:|---:|---:|---:|---:|",
              f"| {o['studies']:,} | {o['query_seconds']} | {o['query_peak_rss_growth_mb']} | {o['index_mb']} "
              f"| {o['dict_mb']} |", ""]
    if profile:
        o = profile.output
        lines += [f"### Where a shard's time goes (cProfile of shard {o['shard']}: {o['studies']:,} studies, "
                  f"{o['cpu_seconds']} s CPU, first load)", "", "| stage | seconds | share |", "|---|---:|---:|"]
        for stage, seconds in o["stages"].items():
            lines.append(f"| {stage} | {seconds:.2f} | {seconds / o['profiled_seconds']:.0%} |")
        lines.append("")
    if peers:
        limit = min(args.peer_limit, n)
        lines += [f"### The peer: dlt {DLT_VERSION} `merge`/`scd2` into DuckDB (first {limit:,} studies of the "
                  "same corpus)", "",
                  "| config | step | seconds | studies/s | peak RSS (MB) | load avg | CPU seconds "
                  "| trialsync studies/s ÷ dlt's |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for config, steps in peers.items():
            for ours_step, step in zip(ours, steps, strict=True):
                lines.append(f"| {config} | {step.name} | {step.seconds:.1f} | {rate(limit, step.seconds):,.1f} | "
                             f"{step.peak_rss_mb:,.0f} | {step.load_before:.1f} | {step.cpu_seconds:.0f} | "
                             f"{rate(n, ours_step.seconds) / rate(limit, step.seconds):,.0f}× |")
        lines.append("")
    lines += targets(n, floor, ours, peers, min(args.peer_limit, n))
    lines += ["", END]
    return "\n".join(lines)


def targets(n: int, floor: Step, ours: list[Step], peers: dict[str, list[Step]], limit: int) -> list[str]:
    initial, noop = ours[0], ours[1]
    scale = 600_000 / n  # linear extrapolation: fixed start-up costs make it pessimistic for small sizes

    def at_600k(step: Step) -> str:
        if n == 600_000:
            return f"{step.seconds:.0f} s"
        return f"{step.seconds:.0f} s at {n:,} (×{scale:.1f} linear = {step.seconds * scale:.0f} s, extrapolated)"

    rows = [("600,000 studies end to end ≤ 120 s", at_600k(initial), initial.seconds * scale <= 120),
            ("within 3× of the parse floor", f"{initial.seconds / floor.seconds:.2f}×",
             initial.seconds <= 3 * floor.seconds),
            ("no-op resync ≤ 60 s (at 600,000)", at_600k(noop), noop.seconds * scale <= 60),
            ("peak RSS ≤ 1.5 GB", f"{max(s.peak_rss_mb for s in ours):,.0f} MB",
             max(s.peak_rss_mb for s in ours) <= 1536)]
    for config, steps in peers.items():
        worst = min(rate(n, o.seconds) / rate(limit, p.seconds) for o, p in zip(ours, steps, strict=True))
        rows.append((f"≥ 50× {config}'s studies/s", f"{worst:,.0f}× (worst of the three steps)", worst >= 50))
    return ["### Targets", "", "| target | measured | met |", "|---|---|---|",
            *(f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in rows)]


def write_results(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN not in text:
        text += "\n" + BEGIN + "\n" + END + "\n"
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="trialsync bulk load vs the parse floor vs dlt")
    parser.add_argument("--size", type=int, required=True, help="studies in the generated corpus")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    parser.add_argument("--peer-limit", type=int, default=5000, help="studies dlt loads (same corpus, first N)")
    parser.add_argument("--peer-configs", default="all", help="all | nested | flat")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--peer-venv", type=Path, default=REPO / "bench" / "out" / "dlt-venv",
                        help="the peer's venv (created if missing)")
    parser.add_argument("--workers", type=int, help="trialsync --workers (default: one per core)")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    corpus_dir = args.out / f"corpus-{args.size}"
    print(f"bench: corpus of {args.size:,} studies in {corpus_dir}", flush=True)
    info = corpus.ensure(args.data / "ctgov" / "studies", args.size, corpus_dir)
    zips = {"base": corpus_dir / "base.zip", "changed": corpus_dir / "changed.zip"}
    workdir = Path(tempfile.mkdtemp(prefix=f"run-{args.size}-", dir=args.out))
    try:
        peer_python = None if args.no_peer else dlt_python(args.peer_venv)
        with prefect_server(workdir) as api:
            print("bench: parse floor", flush=True)
            floor = measure("floor", [sys.executable, "-m", "bench.floor", str(zips["base"])])
            print("bench: trialsync load-bulk x3", flush=True)
            ours = run_trialsync(zips, workdir, api, args.workers)
        heads = measure("heads", [sys.executable, "-m", "bench.heads", str(workdir / "warehouse")])
        print("bench: profile of one shard", flush=True)
        profile = measure("profile", [sys.executable, "-m", "bench.profile_shard", str(zips["base"])])
        peers: dict[str, list[Step]] = {}
        if peer_python:
            wanted = {"all": PEER_CONFIGS, "nested": dict(list(PEER_CONFIGS.items())[:1]),
                      "flat": dict(list(PEER_CONFIGS.items())[1:])}[args.peer_configs]
            for config, nesting in wanted.items():
                print(f"bench: {config} x3 on {min(args.peer_limit, args.size):,} studies", flush=True)
                peers[config] = run_peer(peer_python, zips, workdir, min(args.peer_limit, args.size), nesting)
        section = report(args, info, floor, ours, heads, profile, peers, started)
        write_results(args.results, section)
        print(section)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
