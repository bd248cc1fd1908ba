"""Domain adaptation: cross from the source domain to the target. DANN and MMD, and their parts.

An adaptation term pulls the features the head classifies (its input, [B, D]) of a source batch
and a target-domain batch together, composed with any strategy (terms.py runs both domains in one
forward pass and adds the term to the cross-entropy).
Contract: `make_adaptation(name, strength, feature_dim)` gives the one named (None for "none");
`loss(source, target, progress)` is the term, already times `strength`, differentiable in both
feature batches; `modules()` are its own trainable parts (the caller moves them to the device and
gives them an optimizer group); `stats` holds what the last `loss` measured (DANN: the
discriminator's accuracy); `state_dict()`/`load_state_dict()` carry it across a resume.
The parts are public: `grad_reverse` (the gradient-reversal layer), `dann_coefficient` (its
schedule), `gaussian_mmd` (the multi-kernel MMD^2 estimate).

Each class implements the method term_specs.py declares under its `name` (label, summary, knobs:
torch-free there, so that a run's settings are checked without torch); `@register_adaptation`
refuses a name not declared there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..registry import Registry
from .term_specs import ADAPTATIONS, AdaptationSpec, check_strength

# The implementation of each declared adaptation method, by name.
IMPLEMENTED: Registry[type[Adaptation]] = Registry("adaptation", flag="--adapt", none="none")


def register_adaptation(cls: type[Adaptation]) -> type[Adaptation]:
    """Class decorator: `cls` implements the adaptation term_specs.py declares as `cls.name`."""
    if cls.name not in ADAPTATIONS:
        raise ValueError(
            f"adaptation {cls.name!r} ({cls.__name__}) is not declared: add its AdaptationSpec to "
            f"training/term_specs.py (the settings, the form and --help read it there)"
        )
    cls.spec = ADAPTATIONS.get(cls.name)
    return IMPLEMENTED.register(cls)


class GradReverse(torch.autograd.Function):
    """The gradient-reversal layer (Ganin & Lempitsky 2015): the identity forward, the gradient
    times -coeff backward, so the features learn to fool the discriminator that learns on them."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output * -ctx.coeff, None


def grad_reverse(x: torch.Tensor, coeff: float) -> torch.Tensor:
    return GradReverse.apply(x, float(coeff))


def dann_coefficient(progress: float, gamma: float = 10.0) -> float:
    """Ganin & Lempitsky 2015's schedule for the reversal: 2 / (1 + exp(-gamma p)) - 1, from 0 at
    the start (p = 0: the discriminator's early, noisy gradient does not reach the features) to
    ~1 at the end (0.9999 for gamma 10). `progress` p in [0, 1] is the share of training steps done."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress {progress}: must be in [0, 1] (training steps done / total steps)")
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def gaussian_mmd(
    x: torch.Tensor, y: torch.Tensor, scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)
) -> torch.Tensor:
    """Multi-kernel Gaussian MMD^2 between samples x [n, d] and y [m, d], n, m >= 2.

    The kernel is a sum of Gaussians k(a, b) = sum_s exp(-||a - b||^2 / (s * h)) (Long et al.
    2015, DAN), with the base bandwidth h the median pairwise squared distance of the pooled
    batch (detached: the bandwidth follows the features, it is not trained). The estimate is
    Gretton et al. 2012's unbiased one (MMD^2_u: the diagonals of Kxx and Kyy left out), so two
    samples of one distribution give ~0 (possibly slightly negative), not a positive bias.
    Computed in float32 whatever the autocast.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"gaussian_mmd: expects x [n, d] and y [m, d], got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise UserError(
            f"mmd needs at least 2 source and 2 target images per batch, got {n} and {m}: "
            f"raise --batch-size or add target images"
        )
    with torch.autocast(device_type=x.device.type, enabled=False):
        z = torch.cat([x.float(), y.float()])
        sq = z.square().sum(dim=1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp_min(0.0)
        i, j = torch.triu_indices(n + m, n + m, offset=1, device=z.device)
        h = d2.detach()[i, j].median().clamp_min(1e-12)
        k = sum(torch.exp(-d2 / (s * h)) for s in scales)
        assert isinstance(k, torch.Tensor)  # a sum of tensors (there are scales)
        kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
        xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        return xx + yy - 2.0 * kxy.mean()


class Adaptation:
    """A domain-adaptation term: `loss(source, target, progress)` on the features (the head's
    input, [B, D]) of a source batch and a target batch, already multiplied by `strength`.
    `modules()` are its own trainable parts; the caller moves them to the device and puts
    them in an optimizer group. `stats` holds what the last `loss` call measured."""

    name: ClassVar[str] = ""  # the declared method it implements (term_specs.ADAPTATIONS)
    spec: ClassVar[AdaptationSpec]  # that declaration: label, summary, knobs (set by @register_adaptation)

    def __init__(self, strength: float, feature_dim: int):
        self.strength = check_strength(strength, "--adapt-strength", "the adaptation term's weight in the loss")
        if feature_dim < 1:
            raise ValueError(f"feature_dim {feature_dim}: must be >= 1 (the width of the head's input)")
        self.feature_dim = int(feature_dim)
        self.stats: dict[str, float] = {}

    def modules(self) -> list[nn.Module]:
        return []

    def loss(self, source: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise UserError(
                f"the checkpoint's adaptation is {state.get('name')!r}, this run's is {self.name!r}: "
                f"resume with --adapt {state.get('name')} or start a new run"
            )

    def _check(self, source: torch.Tensor, target: torch.Tensor) -> None:
        for what, t in (("source", source), ("target", target)):
            if t.dim() != 2 or t.shape[1] != self.feature_dim:
                raise ValueError(
                    f"{self.name}: {what} features are shaped {tuple(t.shape)}, expected "
                    f"[batch, {self.feature_dim}] (the head's input)"
                )


@register_adaptation
class DANN(Adaptation):
    """Domain-adversarial training: Ganin & Lempitsky 2015, "Unsupervised domain adaptation by
    backpropagation" (ICML); Ganin et al. 2016 (JMLR). A discriminator learns to tell source
    (label 0) from target (label 1) features; behind a gradient-reversal layer the features
    learn to make them indistinguishable. The reversal's weight rises with `dann_coefficient`."""

    name = "dann"

    def __init__(self, strength: float, feature_dim: int, hidden: int = 256):
        super().__init__(strength, feature_dim)
        self.discriminator = nn.Sequential(
            nn.Linear(feature_dim, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, 1),
        )

    def modules(self) -> list[nn.Module]:
        return [self.discriminator]

    def loss(self, source: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
        self._check(source, target)
        features = grad_reverse(torch.cat([source, target]), dann_coefficient(progress))
        logits = self.discriminator(features).squeeze(1).float()
        domain = torch.cat([logits.new_zeros(len(source)), logits.new_ones(len(target))])
        self.stats = {"domain_acc": float(((logits > 0).float() == domain).float().mean())}
        return self.strength * F.binary_cross_entropy_with_logits(logits, domain)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "discriminator": self.discriminator.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.discriminator.load_state_dict(state["discriminator"])


@register_adaptation
class MMD(Adaptation):
    """Maximum mean discrepancy: Long et al. 2015, "Learning transferable features with deep
    adaptation networks" (ICML), on the head's input: a multi-kernel Gaussian MMD^2 between the
    source and target features (`gaussian_mmd`), minimised with the task loss. No parameters."""

    name = "mmd"

    def loss(self, source: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
        self._check(source, target)
        self.stats = {}
        return self.strength * gaussian_mmd(source, target)


def make_adaptation(name: str, strength: float, feature_dim: int) -> Adaptation | None:
    """The adaptation method named `name`, or None for "none"; a UserError listing the choices for a
    name not declared."""
    if name == ADAPTATIONS.none:
        return None
    ADAPTATIONS.get(name)  # a name not declared: a UserError that lists the declared ones
    return IMPLEMENTED.get(name)(strength, feature_dim)
