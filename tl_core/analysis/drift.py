"""Layer drift: how far each layer group moved from where training started.

Per group, the relative change ||w - w0|| / ||w0|| over all its parameters taken together
(w0: the weights the run started from: pretrained for the body, the fresh initialisation for
the new head). It answers "which layers did this strategy really change": a frozen group reads
exactly 0 (its weights are never touched, so w - w0 is exactly zero), a fine-tuned group reads
how much of its pretrained weight it rewrote. The loop records it every epoch as `drift/<group>`.
A group's weights are taken as its forward pass uses them (models/adapters.py,
`effective_parameters`): a LoRA run's adapted layers with their adapters' update B @ A added, the
adapters themselves not counted, so LoRA's drift reads the change it made to the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.adapters import effective_parameters
from ..models.backbones import LayerGroup


class Drift:
    """The starting weights of every group, and each group's relative change since them."""

    def __init__(self, groups: Sequence[LayerGroup]):
        self.names = [g.name for g in groups]
        self.start = [[p.detach().clone() for p in effective_parameters(g)] for g in groups]

    @torch.no_grad()
    def measure(self, groups: Sequence[LayerGroup]) -> dict[str, float]:
        out = {}
        for name, group, start in zip(self.names, groups, self.start):
            moved = sum(
                float((p.detach().float() - w0.float()).pow(2).sum())
                for p, w0 in zip(effective_parameters(group), start)
            )
            size = sum(float(w0.float().pow(2).sum()) for w0 in start)
            out[name] = (moved / size) ** 0.5 if size > 0 else moved**0.5
        return out

    def metrics(self, groups: Sequence[LayerGroup]) -> dict[str, float]:
        """`drift/<group>` for the epoch's metrics."""
        return {f"drift/{name}": value for name, value in self.measure(groups).items()}
