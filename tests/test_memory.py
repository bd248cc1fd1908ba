"""Will a run fit on its GPU: the probe step (gpu_memory.py), its prediction and advice, and the
start-up a run records (cuDNN's search decided by the run's length, where the seconds went)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tl_core.config import make_config
from tl_core.errors import UserError
from tl_core.models import backbones
from tl_core.store import RunSummary
from tl_core.training import gpu_memory
from tl_core.training.finetuning import Finetuning, freeze_to, set_train_mode
from tl_core.training.startup import BENCHMARK_MIN_STEPS, cudnn_benchmark, warm_cuda
from tl_core.training.strategies import get_strategy

from .helpers import train


def _lite0(classes: int = 3) -> backbones.Backbone:
    return backbones.create_backbone("efficientnet_lite0", classes, weights="none")


def _everything(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "flags": [p.requires_grad for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "grads": [p.grad for p in model.parameters()],
    }


@pytest.mark.parametrize("optimizer, moments", [("adamw", 2), ("sgd", 1)])
def test_the_probe_step_trains_the_widest_groups_then_leaves_the_model_as_it_was(optimizer, moments):
    bb = _lite0()
    freeze_to(bb.groups, len(bb.groups) - 1)  # the head only, as a two-phase run starts
    set_train_mode(bb.model, bb.groups, len(bb.groups) - 1)
    before = _everything(bb.model)
    rng = torch.get_rng_state()
    probe = gpu_memory.probe_step(
        bb.model, bb.groups, 0, (4, 3, 32, 32), nn.CrossEntropyLoss(), None, optimizer, torch.device("cpu")
    )
    after = _everything(bb.model)
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])  # BatchNorm's too
    assert after["flags"] == before["flags"] and after["modes"] == before["modes"]
    assert all(g is None for g in after["grads"]) and torch.equal(torch.get_rng_state(), rng)
    # Its gradients were those of every group (the widest boundary, 0), its optimizer state counted from them.
    every = sum(p.numel() * 4 for p in bb.model.parameters()) / 2**20
    assert probe.grads_mb == pytest.approx(every) and probe.optimizer_mb == pytest.approx(moments * every)
    assert probe.batch_size == 4 and probe.seconds > 0


def test_with_domain_adaptation_the_probe_sends_the_target_batch_through_too():
    bb = _lite0()
    seen = []
    bb.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    probe = gpu_memory.probe_step(
        bb.model, bb.groups, 0, (4, 3, 32, 32), nn.CrossEntropyLoss(), None, "adamw", torch.device("cpu"), forwards=2
    )
    assert seen == [8] and probe.batch_size == 4  # the advice is still in the run's batch size


def _probe(**kw) -> gpu_memory.MemoryProbe:
    numbers = dict(
        batch_size=64,
        before_mb=100.0,
        peak_mb=2_100.0,
        grads_mb=100.0,
        optimizer_mb=200.0,
        available_mb=1_500.0,
        total_mb=16_000.0,
        seconds=1.0,
    )
    return gpu_memory.MemoryProbe(**{**numbers, **kw})


def test_a_run_that_would_not_fit_is_told_a_batch_size_that_would():
    p = _probe()  # activations: (2100 - 100 - 100) / 64 per image; 400 MiB that do not grow with the batch
    assert p.predicted_mb == 2_300 and not p.fits()
    b = p.batch_that_fits()
    per_image = 1_900 / 64
    assert 400 + b * per_image <= gpu_memory.HEADROOM * 1_500 < 400 + (b + 1) * per_image
    assert _probe(batch_size=b, peak_mb=200 + b * per_image).fits()
    message = p.advice("NVIDIA T4")
    assert "batch size 64 needs about 2.2 GiB" in message and "NVIDIA T4 has 1.5 GiB free of 15.6 GiB" in message
    assert (
        f"lower --batch-size to {b} or less (with --accumulate {-(-64 // b)} for the same effective batch)" in message
        and "--checkpointing on" in message
    )
    assert _probe(available_mb=30_000.0).fits()
    # Not even one image fits beside the weights: say what else to change.
    assert "lower --image-size or choose a smaller backbone" in _probe(available_mb=300.0).advice("GPU 0")


@pytest.mark.parametrize(
    "strategy, params, widest",
    [
        ("feature_extraction", {}, 6),
        ("partial", {"unfreeze": 2}, 4),
        ("two_phase", {"head_epochs": 2}, 0),
        ("full", {}, 0),
        ("progressive", {"unfreeze_every": 2}, 6 - 2),  # 5 epochs: epochs 0-1, 2-3, 4
        # Stalled after its first epoch: a group unfrozen after epochs 1-2, the next would be after 3-4.
        ("progressive", {"unfreeze_on": "plateau", "patience": 2}, 6 - 1),
    ],
)
def test_the_probe_allows_for_the_most_groups_the_plan_will_ever_train(strategy, params, widest):
    groups = [object()] * 7  # six body groups and the head: only counted here
    cfg = make_config(data="unused", strategy=strategy, epochs=5, **params)
    plan = Finetuning.__new__(Finetuning)
    plan.strategy, plan.params, plan.groups, plan.epochs = get_strategy(strategy), cfg.strategy_params(), groups, 5
    assert plan.widest() == widest


def test_cudnn_search_is_on_only_for_runs_long_enough_to_pay_it_back():
    auto = make_config(data="unused")
    assert cudnn_benchmark(auto, 500)[0] is False and "auto: 500 training steps, under" in cudnn_benchmark(auto, 500)[1]
    assert cudnn_benchmark(auto, BENCHMARK_MIN_STEPS)[0] is True
    assert cudnn_benchmark(make_config(data="unused", cudnn_benchmark="on"), 10) == (True, "on (--cudnn-benchmark)")
    assert cudnn_benchmark(make_config(data="unused", cudnn_benchmark="off"), 10**6)[0] is False


def test_a_run_records_where_its_start_up_went(tiny_run):
    store, run_id = tiny_run  # feature_extraction on tiny, 1 epoch
    summary = store.get_run(run_id).summary
    parts = summary["startup"]
    assert set(parts) == {"data", "model", "features_and_resume"} and all(v >= 0 for v in parts.values())
    assert sum(parts.values()) == pytest.approx(summary["startup_seconds"], abs=0.01)
    assert "gpu_memory" not in summary  # measured on a GPU only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_probe_predicts_the_peak_and_refuses_what_would_not_fit(tiny, store, monkeypatch):
    fits = train(store, data=tiny, strategy="full", epochs=2, image_size=64, device="cuda")
    gpu = store.get_run(fits.run_id).summary["gpu_memory"]
    assert fits.status == "completed" and 0 < gpu["peak_mb"] <= gpu["predicted_mb"] * 1.1
    real = torch.cuda.mem_get_info
    monkeypatch.setattr(
        torch.cuda, "mem_get_info", lambda device=None: (int(gpu["predicted_mb"] * 2**20 / 2), real(device)[1])
    )
    refused = train(store, data=tiny, strategy="full", epochs=2, image_size=64, device="cuda")
    assert refused.status == "failed" and refused.epochs == 0
    assert "would not fit in GPU memory" in refused.error and "lower --batch-size to" in refused.error


def test_a_step_that_runs_out_of_memory_is_told_plainly_what_to_lower():
    e = gpu_memory.ran_out(32, "NVIDIA T4", 2 * 2**30, 16 * 2**30)
    assert isinstance(e, UserError) and str(e) == (
        "this run would not fit in GPU memory: one training step at batch size 32 ran out of it on NVIDIA T4 "
        "(2.0 GiB free of 16.0 GiB); lower --batch-size (try 16, with --accumulate 2 for the same effective batch), "
        "or turn --checkpointing on, then start it again"
    )


def test_the_standby_starts_cuda_ahead_of_a_run_only_on_its_one_gpu():
    assert warm_cuda(2) is False  # which GPU is the run's is not known yet
    assert warm_cuda(1) is torch.cuda.is_available()
    assert torch.cuda.is_initialized() is torch.cuda.is_available()


def test_the_run_page_says_what_the_probe_and_the_run_measured():
    from ui import format as fmt

    note = fmt.speed_note(
        RunSummary(
            startup_seconds=3.2,
            startup={"data": 0.5, "model": 1.0, "probe_step": 1.5, "features_and_resume": 0.2},
            gpu_memory={"peak_mb": 5120.0, "predicted_mb": 6144.0, "available_mb": 81000.0},
            cudnn_benchmark="off (auto: 120 training steps, under the 100,000 its search pays back in)",
        )
    )
    assert (
        "**startup**: 3.2 s to the first batch (data 0.5 s, model 1.0 s, probe step 1.5 s, features and resume "
        "0.2 s)" in note
    )
    assert "**GPU memory**: peak 5.00 GiB, 6.00 GiB predicted by its probe step of 79.1 GiB free" in note
    assert "**cudnn.benchmark**: off (auto: 120 training steps" in note
    assert fmt.speed_note(RunSummary(gpu_memory={"peak_mb": 1024.0})) == "**GPU memory**: peak 1.00 GiB"
