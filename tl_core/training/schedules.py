"""LR schedules: each trainable group's LR is its peak LR times `lr_factor(schedule, t)`.

t runs from 0 on a phase's first step to 1 on its last (finetuning.py: a phase starts when the
freeze boundary moves), so every schedule starts and ends a phase where it says:
  onecycle   warm up from 1/25 of the peak over the first 25%, then cosine-anneal to 1/25e4
  cosine     from the peak to 0
  step       x0.1 at half and again at three quarters of the phase
  constant   the peak throughout
"""

from __future__ import annotations

import math

SCHEDULES = ("onecycle", "cosine", "step", "constant")


def lr_factor(schedule: str, t: float) -> float:
    """Multiple of a group's peak LR at progress t through the current phase (0: first step, 1: last)."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    if schedule == "onecycle":
        warm, start, end = 0.25, 1 / 25, 1 / 25e4
        if t < warm:
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * t / warm))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (t - warm) / (1 - warm)))
    raise ValueError(f"unknown schedule {schedule!r}")


def progress(step: int, phase_steps: int) -> float:
    """t of `step` (0-based) in a phase of `phase_steps` steps: 0 on the first, 1 on the last.

    (A phase of a single step takes its schedule's start value: its end value is ~0 for most.)
    """
    return min(1.0, step / (phase_steps - 1)) if phase_steps > 1 else 0.0
