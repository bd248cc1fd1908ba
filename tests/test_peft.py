"""Parameter-efficient strategies: LoRA trains only its adapters and the new head, BitFit only the
biases and the new head; everything else stays bitwise as pretrained, the share that trains is
recorded, and a LoRA run's best.pt is the plain architecture (adapters merged) that exports with parity."""

from __future__ import annotations

import pytest
import torch

from tl_core.analysis.drift import Drift
from tl_core.config import make_config
from tl_core.errors import UserError
from tl_core.models import adapters, backbones
from tl_core.models.families import BackboneSpec, Family, Layout, Stage
from tl_core.models.weights import Preprocessing
from tl_core.service import export_run, strategy_param_counts
from tl_core.service.catalog import layer_groups
from tl_core.store.run_folders import run_folder
from tl_core.training.checkpoint import Checkpoint
from tl_core.training.finetuning import Finetuning, sync_param_groups
from tl_core.training.strategies import StrategyParams, get_strategy

from .helpers import stop_before_epoch, train

LITE = "efficientnet_lite0"  # packaged ImageNet weights: pretrained, offline


def _pretrained() -> dict[str, torch.Tensor]:
    return backbones.create_backbone(LITE, 4).model.state_dict()


def _run(store, tiny, strategy: str, **settings):
    result = train(store, data=tiny, backbone=LITE, strategy=strategy, epochs=2, lr=0.01, **settings)
    assert result.status == "completed", result.error
    run = store.get_run(result.run_id)
    return run, store.epoch_metrics([run.id])[run.id]


@pytest.mark.slow  # peft's import (transformers) and two exports: ~14 s on 2 cores
def test_lora_trains_only_its_adapters_and_the_head_and_exports_with_parity(store, tiny):
    run, epochs = _run(store, tiny, "lora", lora_rank=4, lora_alpha=8)
    last = Checkpoint.load(run_folder(run) / "last.pt").model
    pretrained = _pretrained()
    adapted = {k for k in last if adapters.is_adapter_parameter(k)}
    assert adapted and all(".lora_A.default." in k or ".lora_B.default." in k for k in adapted)
    # Every pretrained tensor (weights, biases, BatchNorm statistics) is bitwise as loaded; the
    # adapters' B left zero, and the head, moved.
    for key, value in last.items():
        plain = key.replace(".base_layer.", ".")
        if key in adapted or plain.startswith("classifier."):
            continue
        assert torch.equal(value, pretrained[plain]), f"{key} changed"
    assert any(last[k].abs().sum() > 0 for k in adapted if ".lora_B." in k)
    assert not torch.equal(last["classifier.weight"], pretrained["classifier.weight"])
    # The share recorded: adapters and head over every parameter, adapters included.
    n_adapters = sum(last[k].numel() for k in adapted)
    n_head = last["classifier.weight"].numel() + last["classifier.bias"].numel()
    for m in epochs.values():
        assert m["trainable_params"] == n_adapters + n_head
        assert 0 < m["trainable_share"] < 0.1
        assert m["trainable_share"] == pytest.approx(m["trainable_params"] / (n_adapters + _params(LITE)), rel=1e-9)
        assert m["drift/stem"] == 0 and m["drift/stage7"] > 0  # the stem's one conv takes no adapter
    # New run's count, without peft or weights, is what trained.
    counts = strategy_param_counts(LITE, "lora", {"lora_rank": 4, "image_size": 32}, num_classes=4)
    assert counts["start_trainable"] == counts["end_trainable"] == n_adapters + n_head
    cache = run.summary.feature_cache  # nothing is frozen below the adapters: nothing cached
    assert cache is not None and not cache.used and "trains adapters throughout the body" in (cache.why or "")
    # best.pt is the plain architecture: it loads into the model create_backbone builds.
    best = Checkpoint.load(run_folder(run) / "best.pt").model
    assert not any(adapters.is_adapter_parameter(k) or ".base_layer." in k for k in best)
    backbones.create_backbone(LITE, 4, weights="none").model.load_state_dict(best)
    for fmt in ("torchscript", "onnx"):
        r = export_run(store, run.id, fmt)
        assert r["passed"] and r["top1_agreement"] == 1.0, r


def _params(name: str) -> int:
    return sum(p.numel() for p in backbones.skeleton(name, 4).model.parameters())


def test_bitfit_trains_only_biases_and_the_head(store, tiny):
    run, epochs = _run(store, tiny, "bitfit")
    last = Checkpoint.load(run_folder(run) / "last.pt").model
    pretrained = _pretrained()
    assert last.keys() == pretrained.keys()
    moved = [k for k in last if not torch.equal(last[k], pretrained[k])]
    assert moved and all(k.endswith(".bias") or k.startswith("classifier.") for k in moved), moved
    assert any(k.endswith(".bias") and not k.startswith("classifier.") for k in moved)  # the body's biases train
    biases = sum(v.numel() for k, v in pretrained.items() if k.endswith(".bias") and not k.startswith("classifier."))
    n_head = sum(last[k].numel() for k in ("classifier.weight", "classifier.bias"))
    for m in epochs.values():
        assert m["trainable_params"] == biases + n_head
        assert m["trainable_share"] == pytest.approx((biases + n_head) / _params(LITE), rel=1e-9)
        assert m["trainable_groups"] == layer_groups(LITE)
    counts = strategy_param_counts(LITE, "bitfit", {}, num_classes=4)
    assert counts["start_trainable"] == biases + n_head


def test_a_lora_run_resumes_from_its_checkpoint_as_if_never_stopped(store, tiny, monkeypatch):
    from tl_core.training import run as T

    settings = dict(data=tiny, backbone=LITE, strategy="lora", epochs=3, lora_rank=2, seed=3)
    whole = train(store, **settings)
    with monkeypatch.context() as m:
        stop_before_epoch(m, 1)
        stopped = train(store, **settings)
    assert stopped.status == "cancelled" and stopped.epochs == 1
    store.requeue(stopped.run_id, status="running")
    resumed = T.train_run(store, stopped.run_id, progress=False)
    assert whole.status == resumed.status == "completed", resumed.error
    assert store.get_run(resumed.run_id).summary.resumed_from is not None
    a, b = (store.epoch_metrics([r.run_id])[r.run_id] for r in (whole, resumed))
    assert sorted(a) == sorted(b) == [0, 1, 2]
    for epoch in range(3):
        for key in ("train_loss", "val_loss", "trainable_params"):
            assert b[epoch][key] == pytest.approx(a[epoch][key], rel=1e-5, abs=1e-7), (epoch, key)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(strategy="lora", lora_rank=0), r"--lora-rank 0: must be at least 1"),
        (dict(strategy="lora", lora_alpha=0), r"--lora-alpha 0.0: must be > 0"),
        (dict(strategy="lora", lora_rank="eight"), r"--lora-rank: input should be a valid integer"),
    ],
)
def test_lora_settings_are_refused_with_what_is_allowed(settings, message):
    with pytest.raises(UserError, match=message):
        make_config(data="x", **settings)
    make_config(data="x", strategy="bitfit", lora_rank=0)  # a knob only lora reads


# --- LoRA on a transformer: a small timm ViT, laid out in groups as the project lays out backbones ---


class _TinyViT(Family):
    """timm's VisionTransformer in two groups (embedding, blocks) and its head: not registered."""

    name = "tiny_vit"
    models = ()
    head = "head"
    first_conv = "patch_embed.proj"
    groups = ("stem", "blocks")
    cam_layer = "blocks.-1.norm1"
    cam_layout = "tokens"

    def layout(self, m):
        def embed(x):
            return m.norm_pre(m._pos_embed(m.patch_embed(x)))

        stem = Stage("stem", [m.patch_embed, m.cls_token, m.pos_embed], [embed])
        return Layout([stem, Stage("blocks", [m.blocks, m.norm])], m.forward_head)


def _vit():
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=3)


def _tiny_vit() -> backbones.Backbone:
    torch.manual_seed(0)
    model = _vit()
    spec = BackboneSpec("tiny_vit", "tiny_vit", _TinyViT.groups, "head", "test", _TinyViT())
    layout = spec.adapter.layout(model)
    groups = [backbones.LayerGroup(s.name, list(s.parts)) for s in layout.stages]
    groups.append(backbones.LayerGroup("head", [model.head]))
    return backbones.Backbone(
        spec, model, groups, layout, Preprocessing((0.5,) * 3, (0.5,) * 3, "bicubic", 1.0, 32), "none"
    )


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")  # torch.jit.trace: export's
def test_lora_on_a_vit_adapts_attention_and_mlp_and_merges_back_exactly():
    bb = _tiny_vit()
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    x = torch.randn(4, 3, 32, 32)
    targets = adapters.add_lora(bb, rank=4, alpha=8, image_size=32)
    # The attention's qkv and proj and the MLP's fc layers of every block; not the patch embedding
    # (a transformer's convolution), not the new head.
    assert targets == [
        f"blocks.{i}.{layer}" for i in range(2) for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    ]
    plan = Finetuning(get_strategy("lora"), StrategyParams(lora_rank=4, lora_alpha=8), bb.groups, epochs=1)
    plan.plan(0)
    cfg = make_config(data="x", strategy="lora", lr=0.01, weight_decay=0.1)
    optimizer = sync_param_groups(None, cfg, bb.groups, plan.planned_boundary, plan.multipliers())
    trained = {n for n, p in bb.model.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in bb.model.named_parameters() if adapters.is_adapter_parameter(n)} | {
        "head.weight",
        "head.bias",
    }
    assert plan.trainable_groups == 2  # the embedding has nothing to train
    in_optimizer = {id(p) for pg in optimizer.param_groups for p in pg["params"]}
    assert in_optimizer == {id(p) for p in bb.model.parameters() if p.requires_grad}
    drift = Drift(bb.groups)
    plan.train_mode(bb.model)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(bb.model(x), torch.tensor([0, 1, 2, 0])).backward()
        optimizer.step()
    state = bb.model.state_dict()
    for key, value in state.items():
        plain = key.replace(".base_layer.", ".")
        if not adapters.is_adapter_parameter(key) and not plain.startswith("head."):
            assert torch.equal(value, before[plain]), f"{key} changed"
    moved = drift.measure(bb.groups)
    assert moved["stem"] == 0 and moved["blocks"] > 0 and moved["head"] > 0
    # Merged: the plain ViT computes what the adapted one does, and traces (export) to it.
    bb.model.eval()
    with torch.no_grad():
        adapted_out = bb.model(x)
        plain = _vit().eval()
        plain.load_state_dict(adapters.plain_state_dict(bb.model))
        torch.testing.assert_close(plain(x), adapted_out, rtol=1e-5, atol=1e-5)
        traced = torch.jit.trace(plain, x[:1])
        torch.testing.assert_close(traced(x), adapted_out, rtol=1e-5, atol=1e-5)
        # And back into a model with adapters (held-out scoring of best.pt): the same function.
        adapters.load_plain_state_dict(bb.model, adapters.plain_state_dict(plain))
        torch.testing.assert_close(bb.model(x), adapted_out, rtol=1e-5, atol=1e-5)


def test_lora_on_a_cnn_adapts_its_convolutions_and_merges_back_exactly():
    # ResNet's 7x7 stride-2 stem, its 3x3 and 1x1 convolutions (strided too): peft's convolution
    # adapters, merged by the same delta as merge_and_unload, give the plain model its function.
    torch.manual_seed(0)
    bb = backbones.create_backbone("resnet18", 3, weights="none")
    targets = adapters.add_lora(bb, rank=2, alpha=4, image_size=32)
    assert targets[0] == "conv1" and "layer2.0.downsample.0" in targets and "fc" not in targets
    for layer in adapters.lora_layers(bb.model).values():  # as if trained: B away from zero
        for b in layer.lora_B.values():
            torch.nn.init.normal_(b.weight, std=0.05)
    x = torch.randn(2, 3, 32, 32)
    bb.model.eval()
    with torch.no_grad():
        plain = backbones.create_backbone("resnet18", 3, weights="none").model.eval()
        plain.load_state_dict(adapters.plain_state_dict(bb.model))
        torch.testing.assert_close(plain(x), bb.model(x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(plain.conv1.weight, bb.model.conv1.base_layer.weight)
    # The layout runs the adapted layers: the stages then the tail are the model's forward.
    y = x
    for stage in bb.layout.stages:
        y = stage(y)
    with torch.no_grad():
        torch.testing.assert_close(bb.layout.tail(y), bb.model(x))
    assert bb.groups[0].parts[0] is bb.model.conv1  # regrouped: the stem holds the adapted conv


def test_lora_skips_layers_whose_forward_the_model_never_calls():
    # torchvision's ViT computes attention with nn.MultiheadAttention, which reads its out_proj's
    # weight directly: an adapter there would be silently ignored, so only the MLP's layers get one.
    bb = backbones.skeleton("vit_b_16", 4)
    example = torch.zeros(1, 3, 224, 224, device="meta")
    targets = adapters.lora_targets(bb.model, bb.spec.head_path, example)
    assert targets and all(t.endswith(("mlp.0", "mlp.3")) for t in targets)
    assert len(targets) == 2 * 12
    # A CNN: its ungrouped convolutions with a plain forward (EfficientNet-Lite's stride-2 stem
    # pads "same" dynamically, Conv2dSame; its depthwise convolutions are grouped).
    lite = backbones.skeleton(LITE, 4)
    targets = adapters.lora_targets(lite.model, "classifier", torch.zeros(1, 3, 32, 32, device="meta"))
    assert "conv_stem" not in targets and "conv_head" in targets
    assert not any("conv_dw" in t for t in targets)
