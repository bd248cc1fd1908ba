"""Regularisers toward the pretrained weights: L2-SP, EWC, and EWC's Fisher information.

A regulariser is a term of the loss that keeps the pretrained body near where it started (w0)
and the new head small, composed with any strategy (terms.py adds it to the cross-entropy):
  alpha/2 * sum_body [F *] (w - w0)^2  +  beta/2 * sum_head w^2      (Li et al. 2018's form)
Contract: `make_regularizer(name, alpha, beta)` gives the one named (None for "none"), then
`setup(body, head[, fisher])` once the model is built, `penalty()` every step (a float32 scalar,
differentiable in every trainable parameter), `state_dict()`/`load_state_dict()` across a resume.
EWC's Fisher is `estimate_fisher(...)`: diagonal, from the pretrained model's own predictive
distribution (labels sampled by `sample_labels`), normalised to mean 1.

Each class implements the method term_specs.py declares under its `name` (label, summary, knobs,
whether it needs a Fisher: torch-free there, so that a run's settings are checked without torch);
`@register_regularizer` refuses a name not declared there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..errors import UserError
from ..registry import Registry
from .term_specs import REGULARIZERS, RegularizerSpec, check_strength

# The implementation of each declared regulariser, by name.
IMPLEMENTED: Registry[type[Regularizer]] = Registry("regularizer", none="none")


def register_regularizer(cls: type[Regularizer]) -> type[Regularizer]:
    """Class decorator: `cls` implements the regulariser term_specs.py declares as `cls.name`."""
    if cls.name not in REGULARIZERS:
        raise ValueError(
            f"regularizer {cls.name!r} ({cls.__name__}) is not declared: add its RegularizerSpec to "
            f"training/term_specs.py (the settings, the form and --help read it there)"
        )
    cls.spec = REGULARIZERS.get(cls.name)
    return IMPLEMENTED.register(cls)


class Regularizer:
    """alpha/2 * sum_body [F *] (w - w0)^2  +  beta/2 * sum_head w^2  (Li et al. 2018's form).

    Life cycle: `setup(body, head[, fisher])` once the model is built (it snapshots w0), then
    `penalty()` every step. Body parameters are checked for `requires_grad` at each call, so a
    strategy that unfreezes groups later brings them under the pull the moment they train.
    A resume calls `load_state_dict` before or after `setup`: the saved w0 (and Fisher) win over
    the snapshot, since by then the weights have already moved.
    """

    name: ClassVar[str] = ""  # the declared method it implements (term_specs.REGULARIZERS)
    spec: ClassVar[RegularizerSpec]  # that declaration: label, summary, knobs (set by @register_regularizer)

    def __init__(self, strength: float, head_strength: float):
        self.alpha = check_strength(strength, "--reg-strength", "alpha, the pull toward the pretrained weights")
        self.beta = check_strength(head_strength, "--head-reg-strength", "beta, the L2 weight on the new head")
        self._body: list[nn.Parameter] | None = None
        self._head: list[nn.Parameter] = []
        self._w0: list[torch.Tensor] = []
        self._fisher: list[torch.Tensor] | None = None
        self._pending: dict | None = None  # a state loaded before setup

    @property
    def needs_fisher(self) -> bool:
        return self.spec.needs_fisher

    def setup(
        self, body: Sequence[nn.Parameter], head: Sequence[nn.Parameter], fisher: Sequence[torch.Tensor] | None = None
    ) -> None:
        """Snapshot w0 = the body's (pretrained) parameters now (detached float32 clones).
        `fisher` (ewc only): one tensor per body parameter, shaped like it."""
        self._body, self._head = list(body), list(head)
        if self._pending is not None:
            state, self._pending = self._pending, None
            self._restore(state, fisher)
            return
        self._w0 = [p.detach().float().clone() for p in self._body]
        self._fisher = self._checked_fisher(fisher) if self.needs_fisher else None

    def penalty(self) -> torch.Tensor:
        """The term to add to the loss: a float32 scalar on the parameters' device, differentiable
        in every trainable parameter (frozen ones are skipped: they contribute nothing)."""
        if self._body is None:
            raise RuntimeError(f"{type(self).__name__}.penalty() before setup(): call setup(body, head) first")
        params = self._body + self._head
        device = params[0].device if params else torch.device("cpu")
        # fp16 would round small differences (w - w0) to zero: always float32, autocast or not
        with torch.autocast(device_type=device.type, enabled=False):
            body = torch.zeros((), device=device)
            for k, (p, w0) in enumerate(zip(self._body, self._w0)):
                if p.requires_grad:
                    sq = (p.float() - w0).square()
                    body = body + (sq if self._fisher is None else self._fisher[k] * sq).sum()
            head = torch.zeros((), device=device)
            for p in self._head:
                if p.requires_grad:
                    head = head + p.float().square().sum()
            return 0.5 * self.alpha * body + 0.5 * self.beta * head

    def state_dict(self) -> dict[str, Any]:
        if self._body is None and self._pending is not None:
            return dict(self._pending)
        return {"name": self.name, "w0": list(self._w0), "fisher": None if self._fisher is None else list(self._fisher)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise UserError(
                f"the checkpoint's regularizer is {state.get('name')!r}, this run's is {self.name!r}: "
                f"resume with --regularizer {state.get('name')} or start a new run"
            )
        if self._body is None:
            self._pending = dict(state)
        else:
            self._restore(state, None)

    def _restore(self, state: dict[str, Any], fisher: Sequence[torch.Tensor] | None) -> None:
        assert self._body is not None  # set up (setup) before the state is restored
        self._w0 = [
            w.detach().float().to(p.device).clone() for w, p in zip(self._matching(state["w0"], "w0"), self._body)
        ]
        saved = state.get("fisher")
        self._fisher = self._checked_fisher(saved if saved is not None else fisher) if self.needs_fisher else None

    def _matching(self, tensors: Sequence[torch.Tensor], what: str) -> list[torch.Tensor]:
        """`tensors` if there is one per body parameter, shaped like it; else a clear error."""
        tensors = list(tensors)
        assert self._body is not None
        if len(tensors) != len(self._body):
            raise UserError(
                f"{self.name}: {len(tensors)} {what} tensors for {len(self._body)} body parameters; "
                f"the checkpoint or estimate was made with another backbone: start a new run"
            )
        for k, (t, p) in enumerate(zip(tensors, self._body)):
            if tuple(t.shape) != tuple(p.shape):
                raise UserError(
                    f"{self.name}: {what} tensor {k} is shaped {tuple(t.shape)}, its parameter "
                    f"{tuple(p.shape)}; the checkpoint or estimate was made with another backbone"
                )
        return tensors

    def _checked_fisher(self, fisher: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
        if fisher is None:
            raise UserError(
                f"{self.name} needs a Fisher information, one tensor per body parameter: estimate it "
                f"with estimate_fisher(...) and pass it to setup(body, head, fisher)"
            )
        assert self._body is not None
        out = [f.detach().float().to(p.device).clone() for f, p in zip(self._matching(fisher, "Fisher"), self._body)]
        if not all(bool(torch.isfinite(f).all()) and bool((f >= 0).all()) for f in out):
            raise UserError(f"{self.name}: the Fisher information must be finite and >= 0; estimate it again")
        return out


@register_regularizer
class L2SP(Regularizer):
    """L2-SP: Li, Grandvalet & Davoine 2018, "Explicit inductive bias for transfer learning with
    convolutional networks" (ICML). Weight decay pulls toward 0, which forgets the pretrained
    solution; pulling toward the starting point w0 keeps it while the task fine-tunes."""

    name = "l2sp"


@register_regularizer
class EWC(Regularizer):
    """Elastic weight consolidation: Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting
    in neural networks" (PNAS). L2-SP weighted per weight by the diagonal Fisher information of
    the pretrained task: weights that mattered to it are held firmly, the others move freely."""

    name = "ewc"


def make_regularizer(name: str, strength: float, head_strength: float) -> Regularizer | None:
    """The regulariser named `name`, or None for "none"; a UserError listing the choices for a name
    not declared."""
    if name == REGULARIZERS.none:
        return None
    REGULARIZERS.get(name)  # a name not declared: a UserError that lists the declared ones
    return IMPLEMENTED.get(name)(strength, head_strength)


# --- the Fisher information of the pretrained task -----------------------------------------


def estimate_fisher(
    model: nn.Module, params: Sequence[nn.Parameter], batches: Iterable[torch.Tensor], max_images: int, seed: int = 0
) -> tuple[list[torch.Tensor], int]:
    """Diagonal Fisher information of `params` under `model`'s own predictive distribution.

    `model(x)` gives the pretrained task's logits (e.g. ImageNet's 1000 classes; the caller puts
    the original classifier back). As EWC defines it (the true Fisher, not the empirical one),
    each image's label is sampled, y ~ softmax(model(x)) (one Monte-Carlo sample per image, batch
    by batch: `sample_labels`, on the CPU from a generator seeded with `seed`, whatever device the
    model runs on, so the same seed draws the same labels on a GPU as on a CPU), and the Fisher is
    the mean over images of the squared gradient of log p(y|x) taken PER IMAGE: the square of a batch's mean
    gradient would not be the Fisher. Per-image gradients come from torch.func (vmap of grad),
    or a loop over single images where vmap cannot run the model.

    The model runs in eval mode (BatchNorm keeps its pretrained statistics, dropout is off);
    every module's mode, every parameter's `requires_grad` and `.grad` are as before afterwards.
    The result is normalised so that its mean over all entries is 1: --reg-strength then means
    the same for ewc as for l2sp (where every weight counts 1). An all-zero estimate (a model
    certain of every prediction) falls back to all ones, i.e. to L2-SP, with a warning.

    Returns (one float32 tensor >= 0 per parameter, shaped like it and on its device; images used).
    """
    if max_images < 1:
        raise UserError(f"--fisher-images {max_images}: must be >= 1 (a few hundred is typical)")
    params = list(params)
    if not params:
        raise ValueError("estimate_fisher: no parameters to estimate the Fisher information of")
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [k for k, p in enumerate(params) if id(p) not in names]
    if missing:
        raise ValueError(f"estimate_fisher: parameters {missing[:5]} are not parameters of the model")
    device = params[0].device
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    modes = {m: m.training for m in model.modules()}
    flags = [p.requires_grad for p in params]
    per_image, chunk = _vmap_grads, _chunk(params)
    generator = torch.Generator(device="cpu").manual_seed(seed)  # where sample_labels draws: see there
    seen = 0
    model.eval()
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            for x in batches:
                if isinstance(x, (tuple, list)):  # a loader of (images, labels): the labels are not used
                    x = x[0]
                x = x[: max_images - seen].to(device)
                if len(x) == 0:
                    break
                with torch.no_grad():
                    y = sample_labels(model(x), generator)
                for i in range(0, len(x), chunk):
                    xs, ys = x[i : i + chunk], y[i : i + chunk]
                    try:
                        grads = per_image(model, names, params, xs, ys)
                    except (RuntimeError, NotImplementedError):  # an op vmap cannot batch: one image at a time
                        if per_image is _loop_grads:
                            raise
                        per_image = _loop_grads
                        grads = per_image(model, names, params, xs, ys)
                    for s, g in zip(sums, grads):
                        s.add_(g.float().square().sum(dim=0))
                seen += len(x)
                if seen >= max_images:
                    break
    finally:
        for m, training in modes.items():
            m.training = training  # each module's own flag: frozen groups stay in eval mode
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    if seen == 0:
        raise UserError(
            "estimate_fisher: no images to estimate the Fisher information from; "
            "check that the training data has images"
        )
    fisher = [s / seen for s in sums]
    mean = sum(float(f.sum()) for f in fisher) / max(1, sum(f.numel() for f in fisher))
    if not (math.isfinite(mean) and mean > 0):
        warnings.warn(
            "the Fisher information estimate is zero everywhere (the model is certain of every "
            "image); ewc falls back to uniform weights, i.e. l2sp",
            stacklevel=2,
        )
        return [torch.ones_like(f) for f in fisher], seen
    return [f / mean for f in fisher], seen


def sample_labels(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One label per row, y ~ softmax(logits), drawn on the generator's device and returned on the
    logits' device. PyTorch draws with a generator only on its own device (a CUDA generator is
    refused for CPU probabilities, and a CPU one for CUDA probabilities), so the probabilities go
    to the generator, not the other way round; `estimate_fisher` keeps its generator on the CPU."""
    probs = logits.detach().float().softmax(dim=1).to(generator.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)


def _chunk(params: Sequence[nn.Parameter]) -> int:
    """Images per vmap call: their per-image gradients stay under ~256 MB of float32."""
    return max(1, min(64, 2**26 // max(1, sum(p.numel() for p in params))))


def _vmap_grads(
    model: nn.Module, names: dict[int, str], params: Sequence[nn.Parameter], x: torch.Tensor, y: torch.Tensor
) -> list[torch.Tensor]:
    """Per-image gradients of log p(y_i|x_i) w.r.t. `params`: [B, *shape] each (torch.func)."""
    keys = [names[id(p)] for p in params]

    def log_p(weights: tuple[torch.Tensor, ...], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, dict(zip(keys, weights)), (xi.unsqueeze(0),))
        return logits.float().log_softmax(dim=1)[0].gather(0, yi.unsqueeze(0)).squeeze(0)

    weights = tuple(p.detach() for p in params)
    with torch.no_grad():  # torch.func.grad still differentiates; no graph of the outer autograd is built
        return list(vmap(grad(log_p), in_dims=(None, 0, 0))(weights, x, y))


def _loop_grads(
    model: nn.Module, names: dict[int, str], params: Sequence[nn.Parameter], x: torch.Tensor, y: torch.Tensor
) -> list[torch.Tensor]:
    """The same as `_vmap_grads`, one image at a time with autograd (never touches .grad)."""
    for p in params:
        p.requires_grad_(True)
    out: list[list[torch.Tensor]] = [[] for _ in params]
    for xi, yi in zip(x, y):
        log_p = model(xi.unsqueeze(0)).float().log_softmax(dim=1)[0, yi]
        grads = torch.autograd.grad(log_p, params, allow_unused=True)
        for o, g, p in zip(out, grads, params):
            o.append(torch.zeros_like(p) if g is None else g)
    return [torch.stack(o) for o in out]
