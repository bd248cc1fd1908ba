"""Training on real images: pretraining pays, frozen means frozen, every epoch is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tl_core.models import backbones
from tl_core.training import loop
from tl_core.training import run as T
from tl_core.training.schedules import lr_factor

from .helpers import train

# The GPU cases run where a CUDA GPU is visible (a GPU host; CI has none).
ON_GPU = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))
EPOCH_KEYS = {
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_top5",
    "val_macro_f1",
    "val_balanced_acc",
    "trainable_groups",
    "trainable_params",
    "trainable_share",
    "epoch_seconds",
    "images_per_sec",
    "peak_memory_mb",
    "wall_seconds",
}


def test_feature_extraction_beats_scratch_on_the_same_budget(animals, store):
    budget = dict(data=animals, backbone="efficientnet_lite0", epochs=3, image_size=64, batch_size=16)
    fe = train(store, strategy="feature_extraction", **budget)
    scratch = train(store, strategy="scratch", **budget)
    assert fe.status == scratch.status == "completed"
    assert fe.best_val_acc >= 0.6, fe.best_val_acc  # 10 classes: chance is 0.1
    assert fe.best_val_acc > scratch.best_val_acc + 0.25, (fe.best_val_acc, scratch.best_val_acc)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("device", ["cpu", ON_GPU])
@pytest.mark.parametrize("strategy, trained_groups", [("feature_extraction", 0), ("partial", 2)])
def test_frozen_parameters_and_batchnorm_buffers_are_bitwise_unchanged(strategy, trained_groups, device, tiny, store):
    result = train(store, data=tiny, strategy=strategy, unfreeze=2, epochs=2, lr=0.05, device=device)
    assert result.status == "completed", result.error
    before = backbones.create_backbone("efficientnet_lite0", 4)
    after = torch.load(Path(store.get_run(result.run_id).run_dir) / "last.pt", map_location="cpu", weights_only=True)[
        "model"
    ]
    body = before.groups[:-1]
    frozen, trained = body[: len(body) - trained_groups], body[len(body) - trained_groups :]
    names = {id(m): n for n, m in before.model.named_modules()}
    for group in frozen:
        for module in group.modules():
            for key, value in module.state_dict().items():  # weights and BN running stats
                full = f"{names[id(module)]}.{key}"
                assert torch.equal(after[full], value), f"{group.name}: {full} moved"
    for group in trained:  # and the groups that train did move their weights; their BatchNorm statistics
        module = group.modules()[0]  # stay the pretrained ones (--bn auto is frozen for partial; test_batchnorm)
        prefix = names[id(module)]
        moved = [k for k, v in module.state_dict().items() if not torch.equal(after[f"{prefix}.{k}"], v)]
        assert any(k.endswith("weight") for k in moved) and not any("running_" in k for k in moved), moved


def test_every_epoch_has_its_rows_and_the_run_its_results(animals, store):
    result = train(store, data=animals, strategy="two_phase", head_epochs=1, epochs=2, image_size=32, device="cpu")
    run = store.get_run(result.run_id)
    assert run.status == "completed" and run.epochs_done == 2 and run.pid and run.host
    assert run.environment["torch"] == torch.__version__ and run.environment["device"] == "cpu"
    epochs = store.epoch_metrics([run.id])[run.id]
    assert sorted(epochs) == [0, 1]
    groups = run.summary["groups"]
    drift = {f"drift/{g}" for g in groups}  # every group's, frozen or not
    assert set(epochs[0]) == EPOCH_KEYS | {"lr/head"} | drift
    assert set(epochs[1]) == EPOCH_KEYS | {f"lr/{g}" for g in groups} | drift
    assert epochs[1]["trainable_params"] > epochs[0]["trainable_params"]
    assert run.best_val_acc == max(m["val_acc"] for m in epochs.values())
    classes = store.class_metrics(run.id)
    assert [c.class_name for c in classes] == run.summary["classes"]
    assert sum(c.support for c in classes) == run.summary["val_images"] == 60
    assert sum(sum(c.confusion) for c in classes) == 60
    best = [m["val_acc"] for m in epochs.values()].index(run.best_val_acc)
    assert sum(c.confusion[c.class_index] for c in classes) / 60 == pytest.approx(epochs[best]["val_acc"])
    assert {p.name for p in Path(run.run_dir).iterdir()} >= {"best.pt", "last.pt"}


def test_a_gpu_run_trains_in_bf16_and_records_the_gpu_and_its_memory(animals, store):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    fe = train(store, data=animals, strategy="feature_extraction", epochs=3, image_size=64, device="cuda")
    full = train(store, data=animals, strategy="full", epochs=2, image_size=64, device="cuda")
    assert fe.status == full.status == "completed", (fe.error, full.error)
    assert fe.best_val_acc >= 0.6, fe.best_val_acc  # as on a CPU: 10 classes, chance is 0.1
    run = store.get_run(full.run_id)
    assert run.environment["device"] == "cuda" and run.environment["gpu"] == torch.cuda.get_device_name()
    amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert store.get_run(fe.run_id).summary["feature_cache"]["precision"] == amp  # the run's autocast
    peak = [m["peak_memory_mb"] for m in store.epoch_metrics([run.id])[run.id].values()]
    assert all(0 < p < torch.cuda.get_device_properties(0).total_memory / 2**20 for p in peak)


def test_a_cpu_run_is_repeatable_with_its_seed(tiny, store):
    a = train(store, data=tiny, strategy="partial", unfreeze=1, epochs=2, seed=3, augment="light")
    b = train(store, data=tiny, strategy="partial", unfreeze=1, epochs=2, seed=3, augment="light")
    ma, mb = (store.epoch_metrics([r.run_id])[r.run_id] for r in (a, b))
    for e in ma:
        for k in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert ma[e][k] == mb[e][k], (e, k)


def test_a_cancel_request_stops_the_run_and_records_it(tiny, store):
    run_id = store.create_run({}, status="queued").id
    store.request_cancel(run_id)
    assert store.get_run(run_id).status == "cancelled"
    from tl_core.config import make_config

    cfg = make_config(data=tiny, epochs=3, image_size=32, batch_size=8, workers=0)
    run = store.create_run(cfg.model_dump(), status="running")
    store.update_run(run.id, cancel_requested=True)
    result = T.train_run(store, run.id, progress=False)
    assert result.status == "cancelled" and result.epochs == 0


def test_a_failing_run_is_recorded_as_failed_with_its_error(tiny, store, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(loop, "evaluate", boom)
    result = train(store, data=tiny, epochs=1)
    run = store.get_run(result.run_id)
    assert run.status == "failed" and "RuntimeError: disk on fire" in run.error and run.ended_at


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step", "constant"])
def test_schedules_start_peak_and_end_where_they_should(schedule):
    f = [lr_factor(schedule, t / 100) for t in range(100)]
    assert max(f) <= 1.0 and min(f) >= 0.0
    if schedule == "onecycle":
        assert f[0] == pytest.approx(1 / 25) and max(f) == pytest.approx(1, abs=1e-3) and f[-1] < 1e-3
    elif schedule == "cosine":
        assert f[0] == 1.0 and f[-1] < 1e-3
    elif schedule == "step":
        assert f[0] == 1.0 and f[60] == pytest.approx(0.1) and f[-1] == pytest.approx(0.01)
    else:
        assert set(f) == {1.0}
