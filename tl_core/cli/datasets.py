"""`demo-data` (the bundled demo datasets written as image folders), `dataset` (a report on a
dataset folder): what there is to train on."""

from __future__ import annotations

from .. import service
from ..data.demo import write_demo_data
from ..errors import UserError
from .commands import command
from .output import _out


@command("demo-data")
def cmd_demo_data(args) -> int:
    if args.per_class < 0 or args.size < 8:
        raise UserError("--per-class must be >= 0 and --size at least 8")
    written = write_demo_data(args.out, tuple(args.datasets), args.per_class, args.size)
    lines = [
        f"{name}: {sum(c.values())} images in {len(c)} classes -> {args.out}/{name}" for name, c in written.items()
    ]
    _out(args, {"out": args.out, "datasets": written}, "\n".join(lines))
    return 0


@command("dataset")
def cmd_dataset(args) -> int:
    rep = service.dataset_report(args.path, args.val_fraction, args.split_seed, args.test_fraction)
    lines = [
        f"{rep['root']} ({rep['layout']}): {rep['num_classes']} classes, "
        f"{rep['train_images']} train / {rep['val_images']} val / {rep['test_images']} test images "
        f"(test split: {rep['test_split']})",
        f"image sizes: min {rep['image_size']['min']}, median {rep['image_size']['median']}, max {rep['image_size']['max']}",
    ]
    lines += [
        f"  {c:<20} train {n['train']:>6}  val {n['val']:>6}  test {n['test']:>6}" for c, n in rep["per_class"].items()
    ]
    lines += [f"skipped: {s['path']} ({s['reason']})" for s in rep["skipped"]]
    lines += [f"warning: {w}" for w in rep["warnings"]]
    _out(args, rep, "\n".join(lines))
    return 0
