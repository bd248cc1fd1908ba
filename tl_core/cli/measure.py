"""Measurements before training: `probe` (how well frozen features separate the classes, and which
strategy to try first), `check-data` (label errors, duplicates and leaks, imbalance, outliers), `rank-backbones` (which backbone: LogME and LEEP on frozen features),
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


SHOWN = 10  # findings of each kind printed as text (--json has them all)


@command("check-data")
def cmd_check_data(args) -> int:
    found = service.check_data(
        service.open_store(args.db),
        _config(args),
        args.check_image_size,
        args.folds,
        args.near_threshold,
        args.job,
        args.pixel_threshold,
    )
    _out(args, found, _check_text(found))
    return 0


def _check_text(c: dict) -> str:
    counts = "; ".join(f"{s} " + ", ".join(f"{k} {n}" for k, n in per.items()) for s, per in c["counts"].items())
    imb = c["imbalance"]
    leaks = sum(g["cross_split"] for g in c["duplicates"])
    lines = [
        f"{c['images']} images of {len(c['classes'])} classes checked with {c['backbone']}'s features at "
        f"{c['image_size']} px (feature cache: {c['feature_cache']}) in {c['seconds']['total']:.1f} s",
        f"images per class: {counts}",
        f"imbalance: {imb['ratio']:g} ({imb['largest']} the largest class, {imb['smallest']} the smallest)",
        f"{c['found']['label_issues']} likely label error(s), most likely first (score: the out-of-sample "
        f"probability of its label; {c['folds']}-fold):",
        _left_out(c),
        _table(c["label_issues"][:SHOWN], ["path", "split", "label", "suggested", "score"])
        if c["label_issues"]
        else "",
        f"{c['found']['duplicates']} group(s) of duplicates, {leaks} across splits (a leak; near: pixels' cosine "
        f">= {c['pixel_threshold']:g} or embeddings' >= {c['near_threshold']:g}; "
        f"{c['found'].get('look_alikes', 0)} by embeddings alone: look-alikes, copies only if edited past their "
        "pixels):",
        _look_alikes(c),
        *[
            f"  {g['kind']} {_similarities(g)}{' ACROSS SPLITS' if g['cross_split'] else ''}: "
            + ", ".join(f"{i['path']} ({i['split']}, {i['label']})" for i in g["images"])
            for g in c["duplicates"][:SHOWN]
        ],
        f"{c['found']['outliers']} outlier(s), far from every class (score: 1 - cosine to the nearest class centre):",
        _table(c["outliers"][:SHOWN], ["path", "split", "label", "score"]) if c["outliers"] else "",
        f"{c['skipped']['count']} file(s) skipped by the scan, {len(c['unreadable'])} unreadable (--json lists them)",
    ]
    return "\n".join(line for line in lines if line)


def _left_out(c: dict) -> str:
    """The classes the label model left out, and what to do, or ''."""
    if not (out := c.get("label_classes_left_out")):
        return ""
    names = ", ".join(f"{o['class']!r} ({o['images']})" for o in out)
    return (
        f"  not checked for label errors: class {names}: fewer train and val images than the {c['folds']} folds "
        "(add images, or pass a smaller --folds, at least 2)"
    )


def _look_alikes(c: dict) -> str:
    """Why look-alikes by embeddings were left out, or ''."""
    if c.get("look_alikes_shown", True):
        return ""
    return (
        f"  look-alikes by embeddings alone left out: {c['look_alike_share']:.0%} of the images have one at cosine "
        f">= {c['near_threshold']:g}, so the embeddings cannot tell these images apart there (every copy by bytes "
        "or pixels is listed); pass a higher --near-threshold to see the closest"
    )


def _similarities(g: dict) -> str:
    if g["kind"] == "exact":
        return "(same bytes)"
    what = "look-alikes, by embeddings alone" if g.get("by") == ["embeddings"] else "copies"
    return f"{what} (pixels {g['pixel_similarity']:.3f}, embeddings {g['similarity']:.3f})"


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
