"""BatchNorm at the unfreeze: each fine-tuning strategy's validation accuracy at the end of each of
its phases, with `--bn frozen` and `--bn train`, on the demo data; writes the "BatchNorm at the
unfreeze" section of BENCHMARKS.md.

    python bench/unfreeze.py                     # seeds 0-2, every strategy below (~30 min on 2 idle CPU cores)
    python bench/unfreeze.py --seeds 0 --report ''   # one seed, printed only
    python bench/unfreeze.py --results r.jsonl   # each run's row kept there as it ends; a second call
                                                 # with the same file runs only the rows it lacks

The data is what `python -m tl_core demo-data data` writes (animals: 10 classes x 150 images at
96 px; 1,200 train / 300 val by --split-seed 0), the model EfficientNet-Lite0 with ImageNet
weights at --image-size 96, every other setting the CLI's default. A phase is a stretch of epochs
with the same trainable groups; its number is the validation accuracy at its last epoch (not
the best epoch, which would hide a phase that ends worse than the one before it). A later phase
"holds" when it ends no more than HOLD below the phase before it (HOLD: 2 points, 6 of the 300
validation images).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from report import replace_section  # noqa: E402  (this folder is on the path as the script's own)

from tl_core.config import make_config  # noqa: E402
from tl_core.data.demo import write_demo_data  # noqa: E402
from tl_core.store import Store  # noqa: E402
from tl_core.training.finetuning import phase_ends  # noqa: E402
from tl_core.training.run import train_run  # noqa: E402

HOLD = 0.02
# Each strategy as a user would run it on the demo data: two_phase as the issue ran it; progressive
# unfreezing one group a epoch (4 of EfficientNet-Lite0's 8 body groups in 5 epochs); the
# strategies with one phase for as long as two_phase trains in all.
STRATEGIES = {
    "two_phase": {"epochs": 3, "head_epochs": 2},
    "progressive": {"epochs": 5, "unfreeze_every": 1},
    "partial": {"epochs": 3},
    "full": {"epochs": 3},
    "discriminative": {"epochs": 3},  # not by default: its phase is one, like full's (--strategies ... discriminative)
}
DEFAULT = ["two_phase", "progressive", "partial", "full"]
START, END = "<!-- unfreeze:start -->", "<!-- unfreeze:end -->"


def run_one(store: Store, data: str, strategy: str, bn: str, seed: int, image_size: int) -> dict:
    cfg = make_config(
        data=data,
        strategy=strategy,
        bn=bn,
        seed=seed,
        image_size=image_size,
        experiment="unfreeze",
        **STRATEGIES[strategy],
    )
    run = store.create_run(cfg.model_dump(), cfg.experiment, f"{strategy}-{bn}-{seed}", status="running")
    started = time.perf_counter()
    result = train_run(store, run.id, progress=False)
    if result.status != "completed":
        raise SystemExit(f"{strategy} --bn {bn} seed {seed}: {result.status}: {result.error}")
    summary = store.get_run(run.id).summary
    phases = phase_ends(store.epoch_metrics([run.id])[run.id])
    return {
        "strategy": strategy,
        "bn": bn,
        "seed": seed,
        "phases": [p["val_acc"] for p in phases],
        "groups": [p["trainable_groups"] for p in phases],
        "best": result.best_val_acc,
        "seconds": round(time.perf_counter() - started, 1),
        "precision": [p["precision"] for p in summary.get("val_precision", [])],
    }


def holds(phases: list[float]) -> bool:
    return all(b >= a - HOLD for a, b in zip(phases, phases[1:]))


def table(rows: list[dict]) -> list[str]:
    """Markdown: one line per strategy, --bn and seed, then each (strategy, --bn)'s means."""
    lines = [
        "| strategy | --bn | seed | val acc at the end of each phase (trainable groups) | best epoch's | "
        "later phases hold |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ends = " → ".join(f"{v:.3f} ({g})" for v, g in zip(r["phases"], r["groups"]))
        lines.append(
            f"| {r['strategy']} | {r['bn']} | {r['seed']} | {ends} | {r['best']:.3f} | "
            f"{'yes' if holds(r['phases']) else '**no**'} |"
        )
    lines += [
        "",
        "Means over the seeds:",
        "",
        "| strategy | --bn | val acc at the end of each phase | last phase's (min-max) | runs that hold |",
        "|---|---|---|---|---|",
    ]
    for key in dict.fromkeys((r["strategy"], r["bn"]) for r in rows):
        group = [r for r in rows if (r["strategy"], r["bn"]) == key]
        means = [statistics.mean(v) for v in zip(*(r["phases"] for r in group))]
        last = [r["phases"][-1] for r in group]
        lines.append(
            f"| {key[0]} | {key[1]} | {' → '.join(f'{m:.3f}' for m in means)} | {means[-1]:.3f} "
            f"({min(last):.3f}-{max(last):.3f}) | {sum(holds(r['phases']) for r in group)}/{len(group)} |"
        )
    return lines


def settings(strategies: list[str]) -> str:
    return "; ".join(
        f"{s} " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in STRATEGIES[s].items()) for s in strategies
    )


def write_section(path: Path, rows: list[dict], args: argparse.Namespace) -> None:
    """Replace this bench's section of BENCHMARKS.md (or append it); bench.py keeps it."""
    import torch

    new = "\n".join(
        [
            START,
            "## BatchNorm at the unfreeze",
            "",
            f"Written by `python bench/unfreeze.py` on {time.strftime('%Y-%m-%d %H:%M')} ({os.cpu_count()} CPU cores, "
            f"torch {torch.__version__}; validation numbers in "
            f"{', '.join(sorted({p for r in rows for p in r['precision']}))}): the demo animals "
            f"(`demo-data`: 1,200 train / 300 val images, 10 classes), EfficientNet-Lite0 at {args.image_size} px, "
            f"seeds {', '.join(map(str, args.seeds))}, every other setting the default. "
            f"Settings per strategy: {settings(args.strategies)}. "
            f"A phase's number is its last epoch's validation accuracy; a later phase holds when it ends no more than "
            f"{HOLD:.0%} below the one before.",
            "",
            *table(rows),
            END,
        ]
    )
    replace_section(path, START, END, new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strategies", nargs="+", default=DEFAULT, choices=list(STRATEGIES))
    ap.add_argument("--bn", nargs="+", default=["frozen", "train"], choices=["frozen", "train"])
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument(
        "--data", default=None, help="a dataset folder (default: the demo animals, written to a temporary folder)"
    )
    ap.add_argument(
        "--report", default=str(ROOT / "BENCHMARKS.md"), help="the report to write this section into ('' for none)"
    )
    ap.add_argument(
        "--results",
        default=None,
        help="a JSON-lines file each run's row is appended to; rows already there are not run again",
    )
    args = ap.parse_args()
    done = {}
    if args.results and Path(args.results).exists():
        for line in Path(args.results).read_text().splitlines():
            r = json.loads(line)
            done[(r["strategy"], r["bn"], r["seed"])] = r
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TL_RUNS_DIR"] = str(Path(tmp) / "runs")  # and its caches: shared by this bench's runs
        data = args.data
        if data is None:
            write_demo_data(Path(tmp) / "data", datasets=("animals",))
            data = str(Path(tmp) / "data" / "animals")
        store = Store(f"sqlite:///{Path(tmp) / 'unfreeze.db'}")
        rows = []
        for strategy in args.strategies:
            for bn in args.bn:
                for seed in args.seeds:
                    if (strategy, bn, seed) in done:
                        rows.append(done[(strategy, bn, seed)])
                        continue
                    rows.append(run_one(store, data, strategy, bn, seed, args.image_size))
                    r = rows[-1]
                    if args.results:
                        with open(args.results, "a") as f:
                            f.write(json.dumps(r) + "\n")
                    print(
                        f"{strategy:15s} --bn {bn:6s} seed {seed}: "
                        f"{' -> '.join(f'{v:.3f}' for v in r['phases'])}  ({r['seconds']:.0f} s)",
                        flush=True,
                    )
        store.close()
    print("\n".join(table(rows)))
    if args.report:
        write_section(Path(args.report), rows, args)


if __name__ == "__main__":
    main()
