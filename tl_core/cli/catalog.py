"""`backbones`, `strategies`: what there is to train with."""

from __future__ import annotations

from .. import service
from .commands import command
from .output import _out, _table


@command("backbones")
def cmd_backbones(args) -> int:
    rows = service.backbone_table()
    _out(args, {"backbones": rows}, _table(rows, ["backbone", "params", "layer_groups", "imagenet_top1", "weights"]))
    return 0


@command("strategies")
def cmd_strategies(args) -> int:
    rows = service.strategy_table()
    _out(args, {"strategies": rows}, _table(rows, ["strategy", "default_lr", "summary"]))
    return 0
