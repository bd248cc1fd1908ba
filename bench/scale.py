"""How far the store carries a team: a database of 10,000 runs x 100 epochs on SQLite and on
PostgreSQL, and the time the Runs and Compare pages need to load their data from it.

The database is shaped like a team's: twenty grid experiments of 504 runs (7 strategies x 3
train fractions x 4 LRs x 6 seeds), each run completed with 100 epochs of the metrics runs
record since #12 (losses, accuracies, every group's LR and drift: about 25 keys) in both the narrow
epoch_metrics table (the record, 25 million rows) and the run_curves copy the pages read. Rows
go in by the database's bulk path (executemany on SQLite, COPY on PostgreSQL); reads go through
the same store and service calls the pages make, once the machine is quiet (bench.py's
wait_until_quiet; the share other processes took meanwhile is printed). PostgreSQL is a
throwaway server started in a temp dir (tests/postgres.py: default settings but fsync off,
which changes how fast rows go in, not how fast they are read).

    python bench/scale.py [--runs 10000] [--epochs 100] [--backends sqlite,postgresql] [--out r.json]

Prints one JSON object: per backend, generation time, database size and the median of three
loads (ms) of: the Runs page (every run, and one experiment), Compare's data for one experiment
of 504 runs (runs, their curves, the summary table and the statistics), and one run's details.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bookkeeping import GROUPS, _epoch, _median_ms  # noqa: E402

from bench import CpuShare, wait_until_quiet  # noqa: E402  (this folder is on the path)
from tl_core import service  # noqa: E402
from tl_core.store import Store  # noqa: E402
from tl_core.store.tables import SqlEpochMetric, SqlRun, SqlRunCurves  # noqa: E402
from ui import format as fmt  # noqa: E402

STRATEGIES = ["feature_extraction", "partial", "full", "two_phase", "discriminative", "progressive", "scratch"]
FRACTIONS = [0.1, 0.3, 1.0]
LRS = [1e-4, 3e-4, 1e-3, 3e-3]
SEEDS = 6
PER_EXPERIMENT = len(STRATEGIES) * len(FRACTIONS) * len(LRS) * SEEDS  # 504


def _configs(runs: int, epochs: int):
    """(experiment, config) for `runs` runs, 504 to an experiment."""
    n = 0
    while n < runs:
        experiment = f"grid{n // PER_EXPERIMENT:02d}"
        for strategy in STRATEGIES:
            for fraction in FRACTIONS:
                for lr in LRS:
                    for seed in range(SEEDS):
                        if n == runs:
                            return
                        yield (
                            experiment,
                            {
                                "data": "data/animals",
                                "backbone": "efficientnet_lite0",
                                "strategy": strategy,
                                "train_fraction": fraction,
                                "lr": lr,
                                "seed": seed,
                                "epochs": epochs,
                                "split_seed": 0,
                            },
                        )
                        n += 1


def generate(store: Store, runs: int, epochs: int, batch: int = 200) -> dict:
    """Write the runs, their curves and their narrow epoch rows in batches of `batch` runs."""
    rng = random.Random(0)
    started = time.perf_counter()
    experiments: dict[str, int] = {}
    postgres = store.engine.dialect.name == "postgresql"
    pending: list[tuple[str, dict]] = []
    narrow_rows = 0

    def flush() -> None:
        nonlocal narrow_rows
        with store.engine.begin() as c:
            first = (c.scalar(select(SqlRun.id).order_by(SqlRun.id.desc()).limit(1)) or 0) + 1
            ids = list(range(first, first + len(pending)))
            c.execute(
                insert(SqlRun),
                [
                    {
                        "id": i,
                        "uid": f"{i:032x}",
                        "experiment_id": experiments[e],
                        "name": f"{cfg['strategy']}-{i}",
                        "status": "completed",
                        "config": cfg,
                        "summary": {"total_seconds": 550.0, "groups": GROUPS},
                        "environment": {},
                        "epochs_done": epochs,
                        "best_val_acc": 0.8 + rng.uniform(-0.05, 0.05),
                        "best_epoch": epochs - 1,
                        "executor": "local",
                        "host": "gpu-host",
                    }
                    for i, (e, cfg) in zip(ids, pending)
                ],
            )
            curves, narrow = [], []
            for i in ids:
                rows = [_epoch(rng, e, min(len(GROUPS), 1 + e // 10)) for e in range(epochs)]
                keys = list(dict.fromkeys(k for m in rows for k in m))
                matrix = np.array([[m.get(k, math.nan) for k in keys] for m in rows], dtype="<f8")
                curves.append({"run_id": i, "keys": keys, "epochs": list(range(epochs)), "matrix": matrix.tobytes()})
                narrow.extend((i, e, k, v) for e, m in enumerate(rows) for k, v in m.items())
            c.execute(insert(SqlRunCurves), curves)
            if postgres:  # COPY: the bulk path PostgreSQL has for this many rows
                buffer = io.StringIO("".join(f"{i}\t{e}\t{k}\t{v!r}\n" for i, e, k, v in narrow))
                with c.connection.driver_connection.cursor().copy(
                    "COPY epoch_metrics (run_id, epoch, key, value) FROM STDIN"
                ) as copy:
                    copy.write(buffer.getvalue())
            else:
                c.execute(
                    insert(SqlEpochMetric), [{"run_id": i, "epoch": e, "key": k, "value": v} for i, e, k, v in narrow]
                )
            narrow_rows += len(narrow)
        if postgres:  # ids were given explicitly: move the sequence past them
            with store.engine.begin() as c:
                c.execute(text("SELECT setval('runs_id_seq', (SELECT max(id) FROM runs))"))
        pending.clear()

    for experiment, cfg in _configs(runs, epochs):
        if experiment not in experiments:
            experiments[experiment] = store.experiment_id(experiment)
        pending.append((experiment, cfg))
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return {"generate_s": round(time.perf_counter() - started, 1), "epoch_rows": narrow_rows}


def _size_mb(store: Store, path: Path | None) -> float:
    if path is not None:
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20
    with store.engine.connect() as c:
        return c.scalar(text("SELECT pg_database_size(current_database())")) / 2**20


def measure(store: Store) -> dict:
    """Median-of-three load times (ms) of what the pages read."""
    experiment = store.list_experiments()[0]

    def runs_page(experiment=None):
        rows = store.list_runs(experiment)
        fmt.runs_rows(rows)
        service.status_counts(rows)
        return len(rows)

    def compare_data():
        runs = sorted(store.list_runs(experiment=experiment), key=lambda r: r.id)
        metrics = store.epoch_metrics([r.id for r in runs])
        service.summary_rows(runs, metrics, 0.8)
        service.statistics(runs, metrics, "best")
        return len(runs)

    some_run = store.list_runs(experiment=experiment)[0].id
    return {
        "runs_page_all_ms": round(_median_ms(runs_page), 1),
        "runs_in_database": runs_page(),
        "runs_page_experiment_ms": round(_median_ms(lambda: runs_page(experiment)), 1),
        "compare_504_runs_ms": round(_median_ms(compare_data), 1),
        "compare_runs": compare_data(),
        "run_details_ms": round(_median_ms(lambda: service.run_details(store, some_run)), 1),
    }


def run_backend(backend: str, work: Path, runs: int, epochs: int) -> dict:
    server = None
    if backend == "sqlite":
        path = work / "scale.db"
        url = f"sqlite:///{path}"
    else:
        from tests.postgres import PostgresServer

        server = PostgresServer.start(work)
        url, path = server.create_database("scale"), None
    try:
        store = Store(url)
        out = {"backend": backend, **generate(store, runs, epochs)}
        if backend == "postgresql":
            with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(text("ANALYZE"))
        store.close()
        store = Store(url)  # a fresh process's view: nothing cached in the pool
        out["database_mb"] = round(_size_mb(store, path))
        out["waited_for_quiet_s"] = round(wait_until_quiet(max_wait=900))
        with CpuShare() as load:
            out.update(measure(store))
        out["others_cpu_share"] = round(load.others, 2)  # other processes' share while measuring
        store.close()
        return out
    finally:
        if server is not None:
            server.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as d:
        for backend in a.backends.split(","):
            work = Path(d) / backend
            work.mkdir()
            results.append(run_backend(backend.strip(), work, a.runs, a.epochs))
            print(json.dumps(results[-1]), flush=True)
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
