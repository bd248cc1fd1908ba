"""The loss's terms beside the strategy, declared without torch: what exists, what each is called,
what it reads.

Two kinds of term compose with any strategy (terms.py adds them to the cross-entropy):
  regularisers (`--regularizer`): keep the pretrained body near where it started; regularizers.py;
  domain adaptation (`--adapt`):  pull source and target features together; adaptation.py.
This module declares every method of both kinds, one `TermSpec` each: its name (the setting's
value), label, one-sentence summary, the RunConfig fields it reads, and what it needs of a run.
The implementations register into their kind by that name (`@register_regularizer`,
`@register_adaptation`); registering a name not declared here is refused, and a test checks that
every declared name has an implementation. Adding a method: its spec here, its class there.

Why two places: config.py validates `--regularizer` and `--adapt` against these registries and
makes their choices (the CLI's flags, the New run form), and a run's config is checked where torch
must never load: queueing a run, the worker (tests/test_structure.py). The implementations are
torch through and through (autograd functions, modules, torch.func), and importing torch only
inside their methods would hide it in a dozen places. So the torch-free part, the declaration, is
what config reads, and the torch part sits in the modules that compute; the name joins them. This
is the shape strategies and backbone families already had (strategies.py and families.py import
no torch; a family builds its model only when asked). Strategies and families are declared in one
place each because they need no torch to declare; the terms are the one kind that does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError
from ..registry import Registry


@dataclass(frozen=True)
class TermSpec:
    """One method of a kind of loss term, as the settings, forms and summaries know it."""

    name: str  # the setting's value: --regularizer l2sp
    label: str  # how summaries and charts name it: "L2-SP"
    summary: str  # what it does, one sentence (the form's help, --help)
    knobs: tuple[str, ...] = ()  # the RunConfig fields it reads (the form shows them while it is chosen)


@dataclass(frozen=True)
class RegularizerSpec(TermSpec):
    # Weights the pull by the pretrained task's Fisher information, estimated from the pretrained
    # model's own ImageNet predictions on RGB images: the run needs ImageNet weights and 3 channels.
    needs_fisher: bool = False


@dataclass(frozen=True)
class AdaptationSpec(TermSpec):
    """A domain adaptation method: it reads a target domain (`--target-data`) beside the source."""


REGULARIZERS: Registry[RegularizerSpec] = Registry("regularizer", none="none")
ADAPTATIONS: Registry[AdaptationSpec] = Registry("adaptation", flag="--adapt", none="none")


def _declare(registry: Registry, spec: TermSpec) -> None:
    registry.add(spec.name, spec)


# --- regularisers: keep what was pretrained (regularizers.py) --------------------------------

_PULL = ("reg_strength", "head_reg_strength")
_declare(
    REGULARIZERS,
    RegularizerSpec(
        "l2sp", "L2-SP", "Pull the pretrained weights toward their starting point: alpha/2 ||w - w0||^2.", _PULL
    ),
)
_declare(
    REGULARIZERS,
    RegularizerSpec(
        "ewc",
        "EWC",
        "L2-SP weighted by the pretrained task's Fisher information: important weights held harder.",
        (*_PULL, "fisher_images"),
        needs_fisher=True,
    ),
)

# --- domain adaptation: cross from the source domain to the target (adaptation.py) -----------

_declare(
    ADAPTATIONS,
    AdaptationSpec(
        "dann",
        "DANN",
        "A domain discriminator behind a gradient-reversal layer: features the two domains share.",
        ("adapt_strength",),
    ),
)
_declare(
    ADAPTATIONS,
    AdaptationSpec(
        "mmd",
        "MMD",
        "A multi-kernel Gaussian MMD between source and target features, minimised with the task.",
        ("adapt_strength",),
    ),
)


def check_strength(value: float, flag: str, meaning: str) -> float:
    """A term's weight in the loss: a finite number >= 0, or a UserError naming the flag."""
    if not (math.isfinite(value) and value >= 0):
        raise UserError(f"{flag} {value}: must be a finite number >= 0 ({meaning}; 0 turns it off)")
    return float(value)
