"""Terms of the loss: each regulariser and adaptation computes the paper's formula, written out
here independently, and leaves the model as it found it."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from tl_core.errors import UserError
from tl_core.training import adaptation, regularizers
from tl_core.training.adaptation import DANN, dann_coefficient, gaussian_mmd, grad_reverse, make_adaptation
from tl_core.training.regularizers import (
    EWC,
    L2SP,
    Regularizer,
    estimate_fisher,
    make_regularizer,
    register_regularizer,
)
from tl_core.training.term_specs import ADAPTATIONS, REGULARIZERS


def params(*shapes: tuple[int, ...]) -> list[nn.Parameter]:
    return [nn.Parameter(torch.randn(*s)) for s in shapes]


def sq(tensors) -> float:
    """sum of squares in float64: the reference the fp32 penalty is held to."""
    return sum(float(t.detach().double().square().sum()) for t in tensors)


# --- L2-SP and EWC --------------------------------------------------------------------------


def test_l2sp_is_zero_at_w0_and_half_alpha_squared_distance_after_a_move():
    torch.manual_seed(0)
    body, head = params((4, 3), (5,)), params((2, 4), (2,))
    alpha, beta = 0.3, 0.05
    reg = make_regularizer("l2sp", alpha, 0.0)
    reg.setup(body, head)
    assert torch.equal(reg.penalty(), torch.zeros(()))  # exactly 0 at w = w0 (and beta = 0)

    reg = make_regularizer("l2sp", alpha, beta)
    reg.setup(body, head)
    d = [torch.randn_like(p) for p in body]
    with torch.no_grad():
        for p, dk in zip(body, d):
            p.add_(dk)
    pen = reg.penalty()
    assert pen.dtype == torch.float32 and pen.shape == ()
    assert pen.item() == pytest.approx(alpha / 2 * sq(d) + beta / 2 * sq(head), rel=1e-5)
    pen.backward()  # d/dw: alpha (w - w0) for the body, beta w for the head
    for p, dk in zip(body, d):
        torch.testing.assert_close(p.grad, alpha * dk, rtol=1e-5, atol=1e-6)
    for p in head:
        torch.testing.assert_close(p.grad, beta * p.detach(), rtol=1e-6, atol=0)


def test_frozen_parameters_contribute_nothing():
    torch.manual_seed(0)
    body, head = params((4, 3), (5,)), params((2, 4))
    reg = L2SP(1.0, 0.5)
    reg.setup(body, head)
    with torch.no_grad():
        for p in body + head:
            p.add_(1.0)
    body[0].requires_grad_(False)
    head[0].requires_grad_(False)
    assert reg.penalty().item() == pytest.approx(0.5 * body[1].numel(), rel=1e-6)  # only body[1], moved by 1
    # unfrozen later (progressive): it comes under the pull at once
    body[0].requires_grad_(True)
    assert reg.penalty().item() == pytest.approx(0.5 * (body[0].numel() + body[1].numel()), rel=1e-6)


def test_penalty_is_float32_under_autocast():
    torch.manual_seed(0)
    body = params((64,))
    reg = L2SP(1.0, 0.0)
    reg.setup(body, [])
    with torch.no_grad():
        body[0].add_(1e-3)  # differences bf16 would lose next to weights of ~1
    want = reg.penalty().item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pen = reg.penalty()
    assert pen.dtype == torch.float32 and pen.item() == want
    assert want == pytest.approx(0.5 * 64 * 1e-6, rel=1e-2)
    # a half-precision model: the penalty is still summed in float32
    half = [nn.Parameter(torch.randn(4096).to(torch.bfloat16))]
    reg = L2SP(1.0, 1.0)
    reg.setup([], half)
    pen = reg.penalty()
    assert pen.dtype == torch.float32
    assert pen.item() == pytest.approx(0.5 * sq(half), rel=1e-6)


@pytest.mark.parametrize("load_first", [False, True], ids=["setup-then-load", "load-then-setup"])
def test_state_dict_round_trip_restores_w0(load_first):
    torch.manual_seed(0)
    body, head = params((4, 3), (5,)), params((2, 4))
    reg = L2SP(0.7, 0.1)
    reg.setup(body, head)
    with torch.no_grad():
        for p in body:
            p.add_(torch.randn_like(p))
    before = reg.penalty().item()
    assert before > 0
    buf = io.BytesIO()
    torch.save(reg.state_dict(), buf)  # as a checkpoint holds it
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)

    resumed = L2SP(0.7, 0.1)  # a resume: the body has already moved away from w0
    if load_first:
        resumed.load_state_dict(state)
        resumed.setup(body, head)
    else:
        resumed.setup(body, head)
        assert resumed.penalty().item() < before  # its own snapshot is the moved weights
        resumed.load_state_dict(state)
    assert resumed.penalty().item() == before


def test_state_of_another_regularizer_or_backbone_is_refused():
    body, head = params((4, 3), (5,)), params((2, 4))
    reg = L2SP(1.0, 0.0)
    reg.setup(body, head)
    state = reg.state_dict()
    ewc = EWC(1.0, 0.0)
    with pytest.raises(UserError, match="regularizer"):
        ewc.load_state_dict(state)
    other = L2SP(1.0, 0.0)
    other.setup(params((4, 3)), head)
    with pytest.raises(UserError, match="1 body parameters"):
        other.load_state_dict(state)


def test_ewc_weights_each_squared_difference_by_the_fisher():
    torch.manual_seed(0)
    body, head = params((4, 3), (5,)), params((3,))
    fisher = [torch.rand(4, 3) * 3, torch.tensor([0.0, 1.0, 2.0, 0.0, 5.0])]
    alpha, beta = 0.4, 0.2
    reg = make_regularizer("ewc", alpha, beta)
    assert reg.needs_fisher
    reg.setup(body, head, fisher)
    d = [torch.randn_like(p) for p in body]
    with torch.no_grad():
        for p, dk in zip(body, d):
            p.add_(dk)
    want = alpha / 2 * sum(float((f.double() * dk.double() ** 2).sum()) for f, dk in zip(fisher, d))
    want += beta / 2 * sq(head)
    assert reg.penalty().item() == pytest.approx(want, rel=1e-5)
    # and not L2-SP's value: the weighting is real
    assert reg.penalty().item() != pytest.approx(alpha / 2 * sq(d) + beta / 2 * sq(head), rel=1e-3)
    # a zero Fisher entry frees its weight: no gradient there
    reg.penalty().backward()
    assert body[1].grad[0] == 0 and body[1].grad[3] == 0 and body[1].grad[4] != 0


def test_ewc_without_or_with_a_misshapen_fisher_says_what_to_do():
    body, head = params((4, 3), (5,)), params((3,))
    with pytest.raises(UserError, match="Fisher.*estimate_fisher"):
        EWC(1.0, 0.0).setup(body, head)
    with pytest.raises(UserError, match=r"shaped \(5, 1\), its parameter \(5,\)"):
        EWC(1.0, 0.0).setup(body, head, [torch.ones(4, 3), torch.ones(5, 1)])
    with pytest.raises(UserError, match=">= 0"):
        EWC(1.0, 0.0).setup(body, head, [torch.ones(4, 3), -torch.ones(5)])


@pytest.mark.parametrize("name", REGULARIZERS.names())
def test_every_regularizer_pulls_toward_w0(name):
    torch.manual_seed(0)
    body, head = params((4, 3), (5,)), params((3,))
    cls = regularizers.IMPLEMENTED.get(name)
    assert cls.spec.label and cls.spec.summary and cls.__doc__
    reg = make_regularizer(name, 1.0, 0.0)
    fisher = [torch.ones_like(p) for p in body] if cls.spec.needs_fisher else None
    reg.setup(body, head, fisher)
    assert reg.penalty().item() == 0.0
    with torch.no_grad():
        body[0].add_(0.1)
    assert reg.penalty().item() > 0


@pytest.mark.parametrize("alpha", [0.01, 1.0])
def test_l2sp_pulls_by_lr_alpha_under_sgd_and_adamw_rescales_it(alpha):
    """What terms.regularizer_pull tells a run: under SGD (the paper's optimizer) a step moves each
    weight by lr * alpha * (w - w0); under AdamW by about lr whatever alpha (Adam divides the
    gradient by its own RMS), as with any L2 term in Adam's loss."""
    from tl_core.config import make_config
    from tl_core.training.finetuning import make_optimizer
    from tl_core.training.terms import regularizer_pull

    lr = 1e-2
    for optimizer in ("sgd", "adamw"):
        torch.manual_seed(0)
        (w,) = params((50,))
        reg = make_regularizer("l2sp", alpha, 0.0)
        reg.setup([w], [])
        w0 = w.detach().clone()
        with torch.no_grad():
            w.add_(torch.randn(50) * 0.1)
        moved = w.detach().clone()
        cfg = make_config(data="unused", optimizer=optimizer, lr=lr, momentum=0.0, weight_decay=0.0)
        opt = make_optimizer(cfg, [{"params": [w], "weight_decay": 0.0}])
        reg.penalty().backward()
        opt.step()
        step = w.detach() - moved
        if optimizer == "sgd":
            torch.testing.assert_close(step, -lr * alpha * (moved - w0))
        else:
            torch.testing.assert_close(step.abs(), torch.full((50,), lr), rtol=0.05, atol=0.0)  # Adam eps aside
            assert torch.equal(step.sign(), -(moved - w0).sign())
        assert ("rescales" in regularizer_pull("L2-SP", optimizer)) == (optimizer == "adamw")


# --- the Fisher information -----------------------------------------------------------------


def small_cnn() -> nn.Sequential:
    """A pretrained-looking model: BatchNorm with running statistics far from a batch's own."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 6),
    )
    bn = model[1]
    bn.running_mean.copy_(torch.randn(4))
    bn.running_var.copy_(torch.rand(4) + 0.5)
    bn.num_batches_tracked.fill_(100)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(4) + 0.5)
        bn.bias.copy_(torch.randn(4))
    return model


def reference_fisher(model, ps, batches, max_images, seed):
    """The Fisher written out: eval mode, labels drawn batch by batch as the docstring says, one
    backward pass per single image, squared, averaged, normalised to mean 1."""
    model.eval()
    flags = [p.requires_grad for p in ps]
    for p in ps:
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    total, seen = [torch.zeros_like(p, dtype=torch.float64) for p in ps], 0
    for x in batches:
        x = x[: max_images - seen]
        with torch.no_grad():
            y = torch.multinomial(model(x).softmax(1), 1, generator=g).squeeze(1)
        for xi, yi in zip(x, y):
            log_p = model(xi[None]).log_softmax(1)[0, yi]
            for t, gr in zip(total, torch.autograd.grad(log_p, ps)):
                t += gr.double() ** 2
        seen += len(x)
        if seen >= max_images:
            break
    for p, flag in zip(ps, flags):
        p.requires_grad_(flag)
    mean = sum(float(t.sum()) for t in total) / seen / sum(t.numel() for t in total)
    return [(t / seen / mean).float() for t in total], seen


@pytest.fixture(params=["vmap", "loop"])
def per_image(request, monkeypatch):
    """Both ways of taking per-image gradients: torch.func, and the loop it falls back to."""
    if request.param == "loop":

        def unbatchable(*args):
            raise RuntimeError("vmap: no batching rule (simulated)")

        monkeypatch.setattr(regularizers, "_vmap_grads", unbatchable)
    return request.param


def test_fisher_is_per_image_and_leaves_the_model_as_it_was(per_image):
    model = small_cnn()
    ps = [model[0].weight, model[0].bias, model[1].weight, model[1].bias]
    model[1].bias.requires_grad_(False)  # a frozen parameter: still estimated, flag restored
    model.train()
    model[3].eval()  # a submodule's own mode (a frozen group in eval): restored as it was
    bn_before = {k: v.clone() for k, v in model[1].state_dict().items()}
    torch.manual_seed(1)
    batches = [torch.randn(5, 3, 8, 8) for _ in range(4)]

    fisher, used = estimate_fisher(model, ps, batches, max_images=12, seed=3)

    assert used == 12  # 5 + 5 + 2 of the third batch
    assert [f.shape for f in fisher] == [p.shape for p in ps]
    assert all(f.dtype == torch.float32 and bool((f >= 0).all()) for f in fisher)
    assert sum(float(f.sum()) for f in fisher) / sum(f.numel() for f in fisher) == pytest.approx(1.0, rel=1e-5)
    # the state it found: modes per module, requires_grad, no .grad, BatchNorm statistics bitwise
    assert model.training and model[0].training and not model[3].training
    assert [p.requires_grad for p in ps] == [True, True, True, False]
    assert all(p.grad is None for p in model.parameters())
    for k, v in model[1].state_dict().items():
        assert torch.equal(v, bn_before[k]), k

    want, n = reference_fisher(model, ps, batches, 12, seed=3)
    assert n == used
    for f, w in zip(fisher, want):
        torch.testing.assert_close(f, w, rtol=1e-4, atol=1e-6)


def test_fisher_is_not_the_square_of_the_batch_mean_gradient():
    """The per-image reference is the one that matches: a batch's squared mean gradient differs."""
    model = small_cnn()
    ps = [model[0].weight]
    torch.manual_seed(1)
    x = torch.randn(8, 3, 8, 8)
    fisher, _ = estimate_fisher(model, ps, [x], 8, seed=0)
    model.eval()
    y = torch.multinomial(model(x).softmax(1), 1, generator=torch.Generator().manual_seed(0)).squeeze(1)
    (g,) = torch.autograd.grad(model(x).log_softmax(1).gather(1, y[:, None]).mean(), ps)
    batch = g.square() / g.square().mean()
    assert not torch.allclose(fisher[0], batch, rtol=1e-2, atol=1e-3)


def test_fisher_is_reproducible_with_a_seeded_generator_and_guards_an_all_zero_estimate():
    model = small_cnn()
    ps = [model[0].weight]
    x = torch.randn(6, 3, 8, 8)
    a, _ = estimate_fisher(model, ps, [x], 6, seed=5)
    b, _ = estimate_fisher(model, ps, [x], 6, seed=5)
    assert torch.equal(a[0], b[0])
    # a parameter the predictions do not depend on: zero everywhere, so the estimate falls back to ones
    model.unused = nn.Parameter(torch.randn(3))
    with pytest.warns(UserWarning, match="zero everywhere"):
        ones, _ = estimate_fisher(model, [model.unused], [x], 6)
    assert torch.equal(ones[0], torch.ones(3))
    with pytest.raises(UserError, match="no images"):
        estimate_fisher(model, ps, [], 6)
    c, _ = estimate_fisher(model, ps, [x], 6, seed=6)
    assert not torch.equal(a[0], c[0])  # the seed draws the labels


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("logits_on", DEVICES)
@pytest.mark.parametrize("generator_on", DEVICES)
def test_labels_are_drawn_on_the_generators_device_and_returned_on_the_logits(logits_on, generator_on):
    """A GPU run's logits are on the GPU: PyTorch draws with a generator only on its own device
    (a CUDA generator is refused for CPU probabilities: EWC crashed on every GPU run), so the
    probabilities go to the generator. Every pairing draws the labels a CPU draw of the seed gives."""
    logits = torch.randn(64, 10).to(logits_on)
    y = regularizers.sample_labels(logits, torch.Generator(device=generator_on).manual_seed(7))
    assert y.device == logits.device and y.shape == (64,) and y.dtype == torch.long
    if generator_on == "cpu":
        want = torch.multinomial(logits.cpu().softmax(1), 1, generator=torch.Generator().manual_seed(7)).squeeze(1)
        assert torch.equal(y.cpu(), want)


def test_the_fishers_labels_come_from_a_cpu_generator_of_the_seed_whatever_the_models_device(monkeypatch):
    """The estimate makes its own generator (no caller can hand it one of another device), on the
    CPU, so the same seed draws the same labels on a GPU run as on a CPU run."""
    drawn = []
    real = torch.multinomial

    def spy(probs, n, generator=None, **kw):
        drawn.append((probs.device.type, None if generator is None else generator.device.type))
        return real(probs, n, generator=generator, **kw)

    monkeypatch.setattr(torch, "multinomial", spy)
    for device in DEVICES:
        model = small_cnn().to(device)
        estimate_fisher(model, [model[0].weight], [torch.randn(4, 3, 8, 8, device=device)], 4, seed=1)
    assert drawn == [("cpu", "cpu")] * len(DEVICES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ewc_estimates_the_same_fisher_on_a_gpu_as_on_the_cpu():
    model = small_cnn()
    x = torch.randn(6, 3, 8, 8)
    on_cpu, _ = estimate_fisher(model, [model[0].weight], [x], 6, seed=2)
    gpu = copy.deepcopy(model).cuda()
    on_gpu, _ = estimate_fisher(gpu, [gpu[0].weight], [x.cuda()], 6, seed=2)
    torch.testing.assert_close(on_gpu[0].cpu(), on_cpu[0], rtol=1e-3, atol=1e-5)


# --- gradient reversal and its schedule -----------------------------------------------------


@pytest.mark.parametrize("coeff", [0.5, 1.0])
def test_grad_reverse_is_identity_forward_and_minus_coeff_backward(coeff):
    torch.manual_seed(0)
    x = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 3)
    out = grad_reverse(x, coeff)
    assert torch.equal(out, x)
    out.backward(upstream)
    plain = x.detach().clone().requires_grad_(True)
    (plain * 1).backward(upstream)  # the identity's gradient
    assert torch.equal(x.grad, -coeff * plain.grad)


def test_dann_coefficient_rises_from_0_to_about_1():
    assert dann_coefficient(0.0) == 0.0
    values = [dann_coefficient(p / 20) for p in range(21)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert dann_coefficient(1.0) == pytest.approx(0.9999, abs=1e-4)
    assert dann_coefficient(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    with pytest.raises(ValueError, match="progress"):
        dann_coefficient(1.5)


# --- MMD ------------------------------------------------------------------------------------


def test_mmd_is_about_zero_for_one_distribution_and_large_for_a_shifted_one():
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randn(64, 8)
    shifted = torch.randn(64, 8) + 1.0
    same, apart = gaussian_mmd(x, y).item(), gaussian_mmd(x, shifted).item()
    assert apart > 0.1 and abs(same) < 0.1 * apart
    assert gaussian_mmd(shifted, x).item() == pytest.approx(apart, rel=1e-5)  # symmetric


def test_mmd_is_the_unbiased_multi_kernel_estimate():
    torch.manual_seed(0)
    x, y = torch.randn(3, 2), torch.randn(4, 2) + 0.5
    z = torch.cat([x, y]).double()
    d2 = [[float(((a - b) ** 2).sum()) for b in z] for a in z]
    h = float(torch.tensor([d2[i][j] for i in range(7) for j in range(i + 1, 7)]).median())
    scales = (0.5, 1.0, 2.0)

    def k(i, j):
        return sum(math.exp(-d2[i][j] / (s * h)) for s in scales)

    xx = sum(k(i, j) for i in range(3) for j in range(3) if i != j) / 6
    yy = sum(k(i, j) for i in range(3, 7) for j in range(3, 7) if i != j) / 12
    xy = sum(k(i, j) for i in range(3) for j in range(3, 7)) / 12
    assert gaussian_mmd(x, y, scales).item() == pytest.approx(xx + yy - 2 * xy, rel=1e-5, abs=1e-6)


def test_mmd_gradient_is_finite_and_small_batches_are_refused():
    x = torch.randn(5, 4, requires_grad=True)
    gaussian_mmd(x, torch.randn(5, 4) + 1).backward()
    assert bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0
    with pytest.raises(UserError, match="at least 2"):
        gaussian_mmd(torch.randn(1, 4), torch.randn(5, 4))


# --- adaptation methods ---------------------------------------------------------------------


def features(n: int = 6, m: int = 5, d: int = 8):
    torch.manual_seed(0)
    return torch.randn(n, d, requires_grad=True), (torch.randn(m, d) + 1).requires_grad_(True)


def test_dann_trains_its_discriminator_and_reverses_the_features_gradient():
    dann = make_adaptation("dann", 1.0, 8)
    source, target = features()
    loss = dann.loss(source, target, progress=0.5)
    assert loss.shape == () and math.isfinite(loss.item())
    assert 0.0 <= dann.stats["domain_acc"] <= 1.0
    loss.backward()
    disc = dann.modules()[0]
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in disc.parameters())

    # the features' gradient is the discriminator's, reversed and scaled by the schedule
    disc.eval()  # no dropout: the two passes see the same network
    for progress in (0.0, 0.3, 1.0):
        source, target = features()
        dann.loss(source, target, progress).backward()
        s0, t0 = features()
        logits = disc(torch.cat([s0, t0])).squeeze(1)
        labels = torch.cat([torch.zeros(6), torch.ones(5)])
        nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()  # the discriminator's own
        coeff = dann_coefficient(progress)
        torch.testing.assert_close(source.grad, -coeff * s0.grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(target.grad, -coeff * t0.grad, rtol=1e-5, atol=1e-7)
        if progress == 0.0:
            assert torch.equal(source.grad, torch.zeros_like(source))
        else:
            assert float((source.grad * s0.grad).sum()) < 0  # opposed


def test_dann_reports_the_discriminators_accuracy_and_scales_by_strength():
    source, target = features()
    weak = DANN(1.0, 8)
    weak.discriminator.eval()
    strong = DANN(2.5, 8)
    strong.load_state_dict(weak.state_dict())
    strong.discriminator.eval()
    a, b = weak.loss(source, target, 0.5), strong.loss(source, target, 0.5)
    assert b.item() == pytest.approx(2.5 * a.item(), rel=1e-6)
    logits = weak.discriminator(torch.cat([source, target])).squeeze(1)
    right = (logits[:6] <= 0).sum() + (logits[6:] > 0).sum()
    assert weak.stats["domain_acc"] == pytest.approx(float(right) / 11)


def test_mmd_adaptation_is_strength_times_mmd():
    source, target = features()
    mmd = make_adaptation("mmd", 0.7, 8)
    assert mmd.modules() == []
    assert mmd.loss(source, target, 0.2).item() == pytest.approx(0.7 * gaussian_mmd(source, target).item(), rel=1e-6)
    assert mmd.stats == {}


@pytest.mark.parametrize("name", ADAPTATIONS.names())
def test_every_adaptation_is_differentiable_and_survives_a_resume(name):
    cls = adaptation.IMPLEMENTED.get(name)
    assert cls.spec.label and cls.spec.summary and cls.__doc__
    method = make_adaptation(name, 1.0, 8)
    source, target = features()
    loss = method.loss(source, target, 0.5)
    loss.backward()
    assert math.isfinite(loss.item()) and float(source.grad.abs().sum()) > 0 and float(target.grad.abs().sum()) > 0
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    resumed = make_adaptation(name, 1.0, 8)
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    for a, b in zip(method.modules(), resumed.modules()):
        for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(v, w), k
    with pytest.raises(ValueError, match=r"\[batch, 8\]"):
        method.loss(torch.randn(4, 7), torch.randn(4, 7), 0.5)


# --- the doors ------------------------------------------------------------------------------


def test_none_is_none_and_unknown_names_list_the_choices():
    assert make_regularizer("none", 1.0, 1.0) is None
    assert make_adaptation("none", 1.0, 8) is None
    with pytest.raises(UserError, match="'l2-sp'.*none, l2sp, ewc"):
        make_regularizer("l2-sp", 1.0, 1.0)
    with pytest.raises(UserError, match="'coral'.*none, dann, mmd"):
        make_adaptation("coral", 1.0, 8)
    with pytest.raises(UserError, match="--reg-strength -1"):
        make_regularizer("l2sp", -1, 0.0)
    with pytest.raises(UserError, match="--adapt-strength nan"):
        make_adaptation("mmd", float("nan"), 8)


def test_registry_refuses_a_name_twice():
    with pytest.raises(ValueError, match="twice"):

        @register_regularizer
        class Again(Regularizer):
            name = "l2sp"


@pytest.mark.parametrize(
    "module, declared", [(regularizers, REGULARIZERS), (adaptation, ADAPTATIONS)], ids=["regularizers", "adaptation"]
)
def test_every_declared_method_is_implemented_and_every_implementation_declared(module, declared):
    # term_specs.py declares the methods (torch-free: config checks settings against it); the torch
    # modules implement them by name. A declaration without a class would pass config and fail the run.
    assert module.IMPLEMENTED.names() == declared.names()
    for name in declared:
        cls = module.IMPLEMENTED.get(name)
        assert cls.name == name and cls.spec is declared.get(name)


def test_an_implementation_of_an_undeclared_method_is_refused():
    with pytest.raises(ValueError, match="'l3sp'.*not declared.*term_specs.py"):

        @register_regularizer
        class Undeclared(Regularizer):
            name = "l3sp"

    assert "l3sp" not in regularizers.IMPLEMENTED
