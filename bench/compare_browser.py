"""Compare at the scale grids make, measured in Chromium as the e2e tests drive it.

Generates one experiment of about 500 runs x 100 epochs shaped like a grid (7 strategies x 3
train fractions x 4 LRs x 6 seeds), serves the dashboard on it, opens Compare on that experiment
and times how long until every chart on the page is drawn. Also times the page's data (the runs
and all their epochs) as bookkeeping.py does. Prints one JSON object.

    python bench/compare_browser.py [--runs-per-cell 6] [--epochs 100] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bookkeeping  # noqa: E402  (this folder is on the path as the script's own)
from bookkeeping import _epoch, _median_ms  # noqa: E402  (this folder is on the path as the script's own)
from report import replace_section  # noqa: E402  (this folder is on the path as the script's own)

from tl_core.store import ClassMetric, Store  # noqa: E402

STRATEGIES = ["feature_extraction", "partial", "full", "two_phase", "discriminative", "progressive", "scratch"]
FRACTIONS = [0.1, 0.3, 1.0]
LRS = [1e-4, 3e-4, 1e-3, 3e-3]
CLASSES = [f"class{i}" for i in range(10)]


def generate(store: Store, seeds: int, epochs: int) -> int:
    """The grid experiment "grid500": every run completed with its epochs, summary and per-class rows."""
    rng = random.Random(0)
    n = 0
    for strategy in STRATEGIES:
        for fraction in FRACTIONS:
            for lr in LRS:
                for seed in range(seeds):
                    cfg = {
                        "data": "data/animals",
                        "backbone": "efficientnet_lite0",
                        "strategy": strategy,
                        "train_fraction": fraction,
                        "lr": lr,
                        "seed": seed,
                        "epochs": epochs,
                        "split_seed": 0,
                    }
                    run = store.create_run(cfg, "grid500", status="running")
                    store.import_epochs(run.id, {e: _epoch(rng, e, min(9, 1 + e // 10)) for e in range(epochs)})
                    confusion = [[rng.randint(0, 3) + (20 if i == j else 0) for j in range(10)] for i in range(10)]
                    store.log_class_metrics(
                        run.id,
                        [
                            ClassMetric(i, c, 0.8, 0.8, 0.8, sum(confusion[i]), confusion[i])
                            for i, c in enumerate(CLASSES)
                        ],
                    )
                    store.update_run(run.id, best_val_acc=0.8 + rng.uniform(-0.05, 0.05), best_epoch=epochs - 1)
                    store.finish_run(
                        run.id,
                        "completed",
                        summary={
                            "total_seconds": 550.0,
                            "classes": CLASSES,
                            "train_images": int(1200 * fraction),
                            "last_confusion": confusion,
                            "groups": ["stem", *(f"stage{i}" for i in range(1, 8)), "head"],
                        },
                    )
                    n += 1
    return n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(db: str, state: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": db,
        "TL_RUNS_DIR": str(state / "runs"),
        "TL_NO_WORKER": "1",
        "TL_DATA_ROOTS": str(state),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the dashboard did not come up in 90 s")


def time_compare_page(base: str, repeats: int = 3) -> dict:
    """Seconds from opening Compare on the experiment until every chart on the page is drawn."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's chromium is needed: apt-get install chromium")
    times, charts = [], 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(base)  # the router's first run (imports, registries) is not Compare's cost
        page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=120_000)
        for _ in range(repeats + 1):  # the first load warms the server's caches; it is reported apart
            start = time.perf_counter()
            page.goto(f"{base}/compare?experiment=grid500")
            page.wait_for_selector('[data-testid="stPlotlyChart"]', timeout=120_000)
            page.wait_for_timeout(300)
            page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=120_000)
            # Every chart drawn: each plotly container holds its rendered SVG.
            page.wait_for_function(
                """() => {
                const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
                return charts.length > 0 && charts.every(c => c.querySelector('.main-svg'));
            }""",
                timeout=120_000,
            )
            times.append(time.perf_counter() - start)
            charts = page.locator('[data-testid="stPlotlyChart"]').count()
        browser.close()
    return {
        "first_s": round(times[0], 2),
        "seconds": round(sorted(times[1:])[len(times[1:]) // 2], 2),
        "all_s": [round(t, 2) for t in times],
        "charts": charts,
    }


START, END = "<!-- compare-browser:start -->", "<!-- compare-browser:end -->"


def write_section(path: Path, r: dict) -> None:
    """Replace this bench's section of BENCHMARKS.md (or append it); bench.py keeps it."""
    drawn = r["every_chart_drawn"]
    met = "**met**" if drawn["seconds"] <= r["target_s"] else "**missed**"
    new = "\n".join(
        [
            START,
            "## Compare at scale, in Chromium",
            "",
            f"Written by `python bench/compare_browser.py` on {time.strftime('%Y-%m-%d %H:%M')}: one experiment of "
            f"{r['runs']} runs x {r['epochs']} epochs shaped like a grid (7 strategies x 3 train fractions x 4 LRs x "
            f"{r['runs'] // 84} seeds), the dashboard served on it, Compare opened on it in Debian's Chromium (headless, "
            f"as the e2e tests drive it) and timed until every chart on the page is drawn.",
            "",
            "| target | measured | |",
            "|---|---|---|",
            f"| Every chart of a 500-run experiment drawn within {r['target_s']:g} s | {drawn['seconds']:.1f} s (median "
            f"of {len(drawn['all_s']) - 1} loads after the first; {drawn['charts']} charts). The first load after the "
            f"server started took {drawn['first_s']:.1f} s (its statistics and imports not yet cached) | {met} |",
            f"| Compare's data (the runs and every epoch of each) under {r['data_target_ms']:g} ms | "
            f"{r['page_data_ms']:.0f} ms (median of 7); bench.py's own measurement of it (its generated database) "
            f"read {r['bookkeeping_compare_ms']:.0f} ms in this run | "
            f"{'**met**' if r['page_data_ms'] < r['data_target_ms'] else '**missed**'} |",
            "",
            "How: past a dozen runs the curves are drawn per group of seeds (a mean and a band, one legend entry each), "
            "grouped by the first setting that differs until the reader groups by more; one secondary view is drawn at "
            "a time; a grid's hundreds of pairwise statistics are one table; per-class charts are drawn for the runs "
            "picked, not for all; the CSV downloads are made when clicked.",
            END,
        ]
    )
    replace_section(path, START, END, new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs-per-cell", type=int, default=6, help="seeds per grid cell (default 6: 504 runs)")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--out", default=None, help="also write the result as JSON here")
    ap.add_argument(
        "--report", default=str(ROOT / "BENCHMARKS.md"), help="the report to write this section into ('' for none)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        state = Path(d)
        db = f"sqlite:///{state / 'grid.db'}"
        store = Store(db)
        t = time.perf_counter()
        runs = generate(store, args.runs_per_cell, args.epochs)
        out = {"runs": runs, "epochs": args.epochs, "generate_s": round(time.perf_counter() - t, 1)}
        out["page_data_ms"] = round(
            _median_ms(lambda: store.epoch_metrics([r.id for r in store.list_runs(experiment="grid500")]), n=7), 1
        )
        # The same load on bench.py's generated database (its "Compare page's data" target), in this
        # run: how fast this machine is now, against that report's number.
        out["bookkeeping_compare_ms"] = round(
            bookkeeping.measure(state / "bk.db", runs=500, epochs=100)["compare_ms"], 1
        )
        port = _free_port()
        server = _serve(db, state, port)
        try:
            out["every_chart_drawn"] = time_compare_page(f"http://127.0.0.1:{port}")
        finally:
            server.terminate()
            server.wait(timeout=30)
    out["target_s"], out["data_target_ms"] = 5.0, 300.0
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    if args.report:
        write_section(Path(args.report), out)


if __name__ == "__main__":
    main()
