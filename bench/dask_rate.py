"""``load-bulk`` on a 2-worker Dask cluster vs the local process pool, on the same zip (issue 17's Dask row).

``python -m bench.dask_rate --size N`` (the corpus of ``bench.run``, generated if missing) loads the
base zip into fresh warehouses three ways, each as a user runs it, with no Prefect server configured:
the local pool (``--workers 2``); ``--dask local --workers 2``; and a separate ``dask scheduler`` plus
``dask worker --nworkers 2 --nthreads 1`` on this machine (``--dask tcp://...``), the set-up of a real
cluster. It writes the section between ``<!-- dask:begin -->`` and ``<!-- dask:end -->`` of ``--results``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from bench import corpus
from bench.commands import write
from bench.run import BIN, REPO, Step, measure

BEGIN, END = "<!-- dask:begin -->", "<!-- dask:end -->"
TARGET = 0.8  # the Dask cluster's rate ÷ the local pool's


@contextmanager
def dask_cluster(workdir: Path, workers: int) -> Iterator[str]:
    """A scheduler and ``workers`` single-threaded worker processes on 127.0.0.1, in their own group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    log = (workdir / "dask.log").open("w")
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              cwd=REPO)]
    time.sleep(2)
    procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nworkers", str(workers), "--nthreads",
                                   "1", "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True, cwd=REPO))
    try:
        from distributed import Client

        with Client(address, timeout=120) as client:
            client.wait_for_workers(workers, timeout=180)
        yield address
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        log.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="load-bulk on Dask vs the local pool")
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    corpus_dir = args.out / f"corpus-{args.size}"
    corpus.ensure(args.data / "ctgov" / "studies", args.size, corpus_dir)
    base = corpus_dir / "base.zip"
    workdir = Path(tempfile.mkdtemp(prefix="dask-", dir=args.out))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "TRIALSYNC_ENGINE")}
    os.environ.clear()
    os.environ.update(env)
    try:
        def load(name: str, *extra: str) -> Step:
            warehouse = workdir / name.replace(" ", "-")
            return measure(name, [str(BIN / "trialsync"), "load-bulk", str(base), "--warehouse", str(warehouse),
                                  "--quiet", *extra])

        steps = [load("local pool (2 processes)", "--workers", "2"),
                 load("Dask, local cluster (2 workers)", "--dask", "local", "--workers", "2")]
        with dask_cluster(workdir, 2) as address:
            steps.append(load("Dask, scheduler + 2 workers", "--dask", address))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    pool = steps[0]
    lines = [BEGIN, "", f"Measured {started:%Y-%m-%d %H:%M} UTC by `python -m bench.dask_rate --size {args.size}`: "
             f"`load-bulk` of the {args.size:,}-study base zip into a fresh warehouse, whole command, no Prefect "
             "server configured.", "",
             "| execution | seconds | studies/s | ÷ local pool's rate | peak RSS (MB, tree) | load avg | target |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for step in steps:
        ratio = pool.seconds / step.seconds
        target = "" if step is pool else (f"≥ {TARGET:.0%}: " + ("yes" if ratio >= TARGET else "**no**"))
        lines.append(f"| {step.name} | {step.seconds:.1f} | {args.size / step.seconds:,.0f} | {ratio:.0%} | "
                     f"{step.peak_rss_mb:,.0f} | {step.load_before:.1f} | {target} |")
    lines += ["", END]
    text = "\n".join(lines)
    old = args.results.read_text() if args.results.exists() else ""
    if BEGIN not in old:
        args.results.write_text(old.rstrip("\n") + "\n\n## `load-bulk` on Dask (issue 17)\n\n" + BEGIN + "\n" + END
                                + "\n")
    write(args.results, text, BEGIN, END)
    print(text)


if __name__ == "__main__":
    main()
