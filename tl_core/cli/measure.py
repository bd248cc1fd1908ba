"""Measurements before training: `probe` (how well frozen features separate the classes, and which
strategy to try first), `rank-backbones` (which backbone: LogME and LEEP on frozen features),
`lr-find` (the LR range test)."""

from __future__ import annotations

from .. import service
from .commands import command
from .output import _out, _table
from .parser import _config


@command("probe")
def cmd_probe(args) -> int:
    p = service.probe_data(service.open_store(args.db), _config(args), args.max_per_class, args.job)
    rec = p["recommendation"]
    _out(
        args,
        p,
        f"{p['images_per_class']:.0f} training images per class ({p['size']}); linear probe "
        f"{p['linear_probe_acc']:.1%}, k-NN {p['knn_acc']:.1%}, chance {p['chance']:.1%} "
        f"(separability {p['separability']:.2f}: {p['similarity']} to ImageNet)\n"
        f"try first: {', '.join(rec['strategies'])}: {rec['why']}",
    )
    return 0


@command("lr-find")
def cmd_lr_find(args) -> int:
    found = service.find_lr(
        service.open_store(args.db), _config(args), args.start_lr, args.end_lr, args.num_iter, args.rule, args.job
    )
    _out(args, found, f"suggested LR {found['suggested_lr']:.2e} ({found['rule_description']}); {found['stopped']}")
    return 0


@command("rank-backbones")
def cmd_rank_backbones(args) -> int:
    found = service.rank_backbones(
        service.open_store(args.db), _config(args), args.backbones, args.rank_image_size, args.max_per_class, args.job
    )
    rows = [{**s, "leep": "-" if s["leep"] is None else s["leep"]} for s in found["ranked"]]
    skipped = [f"{s['candidate']}: {s['leep_skipped']}" for s in found["ranked"] if s["leep_skipped"]]
    text = "\n".join(
        [
            f"{len(rows)} backbone(s) ranked on {found['images']} training images of {len(found['classes'])} "
            f"classes (at most {found['max_per_class']} a class), best LogME first, in {found['seconds']:.1f} s:",
            _table(rows, ["rank", "candidate", "logme", "leep", "leep_rank", "image_size", "seconds", "feature_cache"]),
            *([f"no LEEP for {'; '.join(skipped)}"] if skipped else []),
            f"{found['scores']['logme']}; {found['scores']['leep']}",
        ]
    )
    _out(args, found, text)
    return 0
