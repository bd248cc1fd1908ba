"""`backbones`, `strategies`: what there is to train with."""

from __future__ import annotations

from .. import service
from .commands import command
from .output import _out, _table


@command("backbones")
def cmd_backbones(args) -> int:
    rows = [] if args.search else service.backbone_table()
    zoo = service.timm_table(args.search)
    text = _table(rows, ["backbone", "params", "layer_groups", "imagenet_top1", "weights"]) if rows else ""
    if args.search:
        text += (
            _table(zoo, ["backbone", "family", "native_size", "params", "weights"]) if zoo else "no timm model matches"
        )
    else:
        text += f"\n{len(zoo)} timm pretrained models: --backbone timm/<name>; list some with --search TEXT"
    _out(args, {"backbones": rows, "timm": zoo}, text)
    return 0


@command("strategies")
def cmd_strategies(args) -> int:
    rows = service.strategy_table()
    _out(args, {"strategies": rows}, _table(rows, ["strategy", "default_lr", "summary"]))
    return 0
