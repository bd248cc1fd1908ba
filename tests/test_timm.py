"""timm's models as backbones (models/timm_models.py, families.Timm): a conformance test over a
sample of timm families, layer-wise LR decay for ViTs, weights from the Hugging Face cache, refusals.

Nothing is downloaded: each model's random weights are saved to a local file (with timm's own
1000-class head, at the architecture's native size) and loaded with --weights PATH, at tiny sizes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tl_core import service
from tl_core.analysis import forgetting, gradcam
from tl_core.cli import main
from tl_core.config import make_config
from tl_core.errors import UserError
from tl_core.inference import export as E
from tl_core.models import backbones, channels, cuts, timm_models, weights
from tl_core.service import export_run
from tl_core.training import finetuning, gpu_memory
from tl_core.training.finetuning import NO_DECAY, Finetuning, sync_param_groups
from tl_core.training.strategies import get_strategy, list_strategies

from .helpers import train

SAMPLE = {  # a family of timm's: (model, image size)
    "convnext": ("convnext_atto", 32),
    "vit": ("vit_tiny_patch16_224", 32),  # built at 32 px: position embeddings resampled from 224's
    "efficientnet": ("efficientnet_b0", 32),
    "regnet": ("regnetx_002", 32),
    "hybrid": ("coatnet_nano_rw_224", 32),  # convolution stages, then transformer stages
    "eva": ("eva02_tiny_patch14_224", 28),  # its blocks also take a rotary position table
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Random weights of each sampled model saved as timm builds it (ImageNet head included)."""
    folder = tmp_path_factory.mktemp("timm_weights")
    paths = {}
    for family, (name, _) in SAMPLE.items():
        torch.manual_seed(0)
        paths[family] = folder / f"{name}.pt"
        torch.save(timm.create_model(name, pretrained=False).state_dict(), paths[family])
    return paths


def _backbone(family: str, saved, **kw) -> backbones.Backbone:
    name, size = SAMPLE[family]
    return backbones.create_backbone(f"timm/{name}", 4, weights=str(saved[family]), image_size=size, **kw)


def _batch(size: int, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, channels, size, size, generator=g), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("family", SAMPLE)
def test_a_timm_model_loads_its_weights_and_cuts_exactly_at_every_boundary(family, saved):
    name, size = SAMPLE[family]
    bb = _backbone(family, saved)
    source = torch.load(saved[family], weights_only=True)
    first = bb.spec.first_conv + ".weight"
    assert torch.equal(bb.model.state_dict()[first], source[first])  # the file's weights, not random ones
    assert [g.name for g in bb.groups] == [*bb.spec.body_groups, "head"] and len(bb.groups) >= 5
    owned = [id(p) for g in bb.groups for p in g.parameters()]
    assert len(owned) == len(set(owned)) == len(list(bb.model.parameters()))  # each parameter in one group
    assert bb.groups[-1].parts == [bb.head] and bb.head.out_features == 4
    x, _ = _batch(size)
    bb.model.eval()
    with torch.no_grad():
        want = bb.model(x)
        y = x
        for stage in bb.layout.stages:  # the stages chained, then the tail: the model's own forward
            y = stage(y)
        torch.testing.assert_close(bb.layout.tail(y), want, rtol=1e-4, atol=1e-5)
        for boundary in range(1, len(bb.groups)):
            cut = cuts.cut_at(bb, boundary, size, torch.device("cpu"))
            torch.testing.assert_close(cut.rest(cut.frozen(x)), want, rtol=1e-4, atol=1e-5)
    maps = gradcam.grad_cam(bb.model, bb.spec, x[:1], [0, 1])
    assert maps.shape == (2, size, size) and maps.max() <= 1


@pytest.mark.parametrize("family", SAMPLE)
def test_every_strategy_trains_a_step_and_its_frozen_groups_stay_bitwise_frozen(family, saved, tiny):
    from tl_core.models import adapters

    name, size = SAMPLE[family]
    plain = _backbone(family, saved)
    adapted = _backbone(family, saved)  # lora's model: adapters injected, as a run's load_model does
    adapters.add_lora(adapted, 4, 8.0, size)
    x, y = _batch(size)
    for strategy in list_strategies():
        bb = adapted if get_strategy(strategy).trains == "adapters" else plain
        start = {k: v.clone() for k, v in bb.model.state_dict().items()}
        cfg = make_config(
            data=tiny, backbone=f"timm/{name}", strategy=strategy, epochs=3, head_epochs=1, image_size=size
        )
        plan = Finetuning(get_strategy(strategy), cfg.strategy_params(), bb.groups, cfg.epochs)
        optimizer = None
        for epoch in range(cfg.epochs):
            plan.plan(epoch)
            n = plan.planned_boundary
            optimizer = sync_param_groups(optimizer, cfg, bb.groups, n, plan.multipliers())
            plan.train_mode(bb.model)

            def frozen_state() -> list[torch.Tensor]:  # parameters and buffers (BatchNorm statistics)
                params = [p for g in bb.groups[:n] for p in g.parameters()]
                params += [p for g in bb.groups[n:] for p in g.parameters() if not p.requires_grad]  # lora, bitfit
                return params + [b for g in bb.groups[:n] for m in g.modules() for b in m.buffers()]

            # The lowest group with a parameter to train (bitfit: a bias; lora: an adapter).
            low = next(i for i in range(n, len(bb.groups)) if any(p.requires_grad for p in bb.groups[i].parameters()))
            before = [t.clone() for t in frozen_state()]
            lowest = [p.clone() for p in bb.groups[low].parameters() if p.requires_grad]
            optimizer.zero_grad()
            F.cross_entropy(bb.model(x), y).backward()
            optimizer.step()
            # Frozen: every parameter and buffer exactly as before the step.
            assert all(torch.equal(a, b) for a, b in zip(before, frozen_state())), f"{strategy}: a frozen tensor moved"
            # Trained: the lowest trainable group moved (gradients reach it through the whole model).
            trained = [p for p in bb.groups[low].parameters() if p.requires_grad]
            moved = [not torch.equal(a, b) for a, b in zip(lowest, trained)]
            assert any(moved), f"{strategy} at boundary {n}: {bb.groups[low].name} did not train"
            if low > n:  # a group without anything of the strategy's to train: only lora, where it has no layer
                assert get_strategy(strategy).trains == "adapters", (
                    f"{strategy}: {bb.groups[n].name} has nothing to train"
                )
        bb.model.load_state_dict(start)


@pytest.mark.parametrize("family", SAMPLE)
def test_the_feature_cache_hits_and_the_exports_predict_as_the_run(family, saved, tiny, store):
    name, size = SAMPLE[family]
    settings = dict(data=tiny, backbone=f"timm/{name}", weights=str(saved[family]), image_size=size, epochs=1)
    first = train(store, strategy="feature_extraction", **settings)
    again = train(store, strategy="feature_extraction", seed=3, **settings)
    deeper = train(store, strategy="partial", unfreeze=1, **settings)
    for result in (first, again, deeper):
        assert result.status == "completed", result.error
    caches = [store.get_run(r.run_id).summary["feature_cache"] for r in (first, again, deeper)]
    assert [c["hit"] for c in caches[:2]] == [False, True] and caches[0]["boundary"] == "head input"
    assert caches[2]["used"] and caches[2]["boundary"].endswith(" input") and caches[2]["boundary"] != "head input"
    # Layer drift per group: the trained last group moved, the frozen ones did not.
    drift = store.epoch_metrics([deeper.run_id])[deeper.run_id][0]
    spec = backbones.get_spec(f"timm/{name}")
    assert drift[f"drift/{spec.body_groups[-1]}"] > 0 and drift[f"drift/{spec.body_groups[0]}"] == 0
    for fmt in ("torchscript", "onnx"):
        r = export_run(store, first.run_id, fmt)
        assert r["passed"] and r["top1_agreement"] == 1.0 and r["max_prob_diff"] <= E.TOLERANCE


def test_discriminative_on_a_vit_decays_the_lr_per_block_and_spares_norms_biases_and_embeddings(tiny):
    cfg = make_config(
        data=tiny,
        backbone="timm/vit_tiny_patch16_224",
        strategy="discriminative",
        image_size=32,
        lr=1e-3,
        layer_decay=0.65,
    )
    bb = backbones.create_backbone(cfg.backbone, 4, weights="none", image_size=32)
    names = [g.name for g in bb.groups]
    assert names == ["stem", *(f"blocks.{i}" for i in range(11)), "blocks.11+norm", "head"]  # one group per block
    plan = Finetuning(get_strategy("discriminative"), cfg.strategy_params(), bb.groups, cfg.epochs)
    plan.plan(0)
    optimizer = sync_param_groups(None, cfg, bb.groups, 0, plan.multipliers())
    L = len(bb.groups)
    lrs = {pg["group"]: pg["peak_lr"] for pg in optimizer.param_groups}
    # BEiT's layer-wise decay: the head at the base LR, each block below it 0.65x the one above, the stem last.
    assert lrs == pytest.approx({name: 1e-3 * 0.65 ** (L - 1 - k) for k, name in enumerate(names)})
    assert lrs["blocks.11+norm"] == pytest.approx(0.65e-3) and lrs["stem"] == pytest.approx(1e-3 * 0.65**13)
    spared = {id(p) for pg in optimizer.param_groups if pg["name"].endswith(NO_DECAY) for p in pg["params"]}
    assert all(pg["weight_decay"] == 0 for pg in optimizer.param_groups if pg["name"].endswith(NO_DECAY))
    named = dict(bb.model.named_parameters())
    for name, p in named.items():
        no_decay = p.ndim <= 1 or name in ("pos_embed", "cls_token")  # norms, biases, position embedding
        assert (id(p) in spared) == no_decay, name
    # Other backbones keep --lr-decay per layer group; --layer-decay is checked.
    conv = make_config(data=tiny, backbone="timm/convnext_atto", strategy="discriminative", image_size=32, lr_decay=2)
    assert not conv.strategy_params().transformer_blocks
    assert get_strategy("discriminative").lr_multipliers(0, 6, conv.strategy_params()) == [
        1 / 32,
        1 / 16,
        1 / 8,
        1 / 4,
        1 / 2,
        1,
    ]
    with pytest.raises(UserError, match="--layer-decay 1.5"):
        make_config(data=tiny, backbone=cfg.backbone, strategy="discriminative", image_size=32, layer_decay=1.5)


def test_timm_no_weight_decay_names_are_spared_beside_one_dimensional_parameters():
    bb = backbones.create_backbone("timm/coatnet_nano_rw_224", 4, weights="none", image_size=32)
    named = dict(bb.model.named_parameters())
    tables = {n for n in bb.model.no_weight_decay() if n in named}
    assert tables  # relative position bias tables
    spared = {id(p) for g in bb.groups[:-1] for p in finetuning.decay_split(g)[1]}
    assert all(id(named[n]) in spared for n in tables)


def test_pretrained_weights_come_from_the_hugging_face_cache_and_a_missing_one_is_refused_before_queueing(
    tiny, tmp_path, monkeypatch
):
    name = "convnext_atto"
    cfg = make_config(data=tiny, backbone=f"timm/{name}", image_size=32)
    monkeypatch.setattr(timm_models, "try_to_load_from_cache", lambda repo, filename: None)
    assert weights.availability(cfg.backbone) == "needs download"
    with pytest.raises(UserError, match=r"not in the Hugging Face cache here .* --weights PATH"):
        service.check_run(cfg)  # TL_OFFLINE (conftest): refused before anything is queued
    # The same weights in the cache: found, loaded, and their own classifier measures forgetting.
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False)
    cached = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(cached))
    repo = timm_models.pretrained_cfg(name)["hf_hub_id"]
    monkeypatch.setattr(
        timm_models,
        "try_to_load_from_cache",
        lambda r, f: str(cached) if (r, f) == (repo, "model.safetensors") else None,
    )
    assert weights.availability(cfg.backbone) == "cached"
    service.check_run(cfg)
    bb = backbones.create_backbone(cfg.backbone, 4, image_size=32)
    assert bb.weights == "imagenet" and torch.equal(bb.model.stem[0].weight, reference.stem[0].weight)
    assert forgetting.why_not_measured(bb) is None
    x, _ = _batch(32)
    kept = forgetting.knowledge_kept(bb, [(x, torch.zeros(4))], "cpu")
    assert kept["agreement"] == 1.0  # the untouched body with its own head agrees with itself
    assert weights.identity(bb.spec, "imagenet", 0)["hf_hub_id"] == repo


def test_bad_names_and_architectures_it_cannot_split_are_refused_clearly(tiny):
    with pytest.raises(UserError, match=r"unknown timm model 'convnext_atoo'.*did you mean timm/convnext_atto"):
        make_config(data=tiny, backbone="timm/convnext_atoo")
    with pytest.raises(UserError, match=r"no pretrained tag 'in99k' for convnext_atto .*; its tags: d2_in1k"):
        make_config(data=tiny, backbone="timm/convnext_atto.in99k")
    with pytest.raises(UserError, match=r"convit_tiny cannot be split into layer groups: blocks.10 is not fed"):
        make_config(data=tiny, backbone="timm/convit_tiny")  # its class token joins midway
    with pytest.raises(UserError, match="2 classifiers"):
        make_config(data=tiny, backbone="timm/levit_128s")  # a distilled pair of heads
    with pytest.raises(UserError, match="timm gives it no group_matcher"):
        make_config(data=tiny, backbone="timm/poolformer_s12")
    with pytest.raises(UserError, match=r"--image-size 48: timm/coatnet_nano_rw_224 cannot run on images of that size"):
        make_config(data=tiny, backbone="timm/coatnet_nano_rw_224", image_size=48)  # its attention windows do not fit


def test_n_channel_input_and_activation_checkpointing(saved):
    bb = _backbone("vit", saved, in_channels=1)
    x, y = _batch(32, channels=1)
    assert bb.model.patch_embed.proj.in_channels == 1
    torch.manual_seed(0)
    F.cross_entropy(bb.model(x), y).backward()
    plain = [p.grad.clone() for p in bb.model.parameters()]
    bb.model.zero_grad()
    assert gpu_memory.checkpoint_activations(bb.groups) == sum(len(g.modules()) for g in bb.groups[:-1])
    torch.manual_seed(0)
    F.cross_entropy(bb.model(x), y).backward()
    for a, p in zip(plain, bb.model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-6)


def test_the_backbones_command_lists_and_searches_timm_models(capsys):
    assert main(["backbones", "--search", "convnext_atto", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["timm"]
    assert {r["backbone"] for r in rows} >= {"timm/convnext_atto.d2_in1k"}
    row = next(r for r in rows if r["backbone"] == "timm/convnext_atto.d2_in1k")
    assert row["family"] == "convnext" and row["native_size"] == 224 and 3e6 < row["params"] < 4e6
    assert len(service.timm_table()) == len(timm.list_models(pretrained=True))


def test_new_run_searches_timm_models_by_name(tmp_path, monkeypatch, tiny):
    from streamlit.testing.v1 import AppTest

    root = Path(tiny).parent
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'test.db'}")
    monkeypatch.setenv("TL_DATA_ROOTS", str(root))
    monkeypatch.setenv("TL_NO_WORKER", "1")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "new_run.py"), default_timeout=120)
    at.run()
    at.segmented_control(key="backbone_from").set_value("timm's models").run()
    at.text_input(key="timm_search").input("convnext_atto").run()
    assert not at.exception, [e.message for e in at.exception]
    picked = at.selectbox(key="timm_backbone")
    assert picked.value == "timm/convnext_atto.d2_in1k"
    label = picked.options[0]  # family, parameters, native size and weights beside the name
    assert label.startswith("timm/convnext_atto.d2_in1k") and "convnext" in label and "M params" in label
    assert "224 px" in label and "weights needs download" in label


def test_an_architecture_the_exporter_cannot_take_is_refused_with_the_reason(tiny_run, monkeypatch, tmp_path):
    store, run_id = tiny_run

    def unsupported(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::window_partition\nmore detail")

    monkeypatch.setattr(torch.jit, "trace", unsupported)
    out = tmp_path / "model.pt"
    with pytest.raises(UserError, match=r"torchscript exporter cannot export .*aten::window_partition\); the other"):
        export_run(store, run_id, "torchscript", out)
    assert not out.exists()


def test_n_channels_need_one_rgb_convolution_to_rebuild():
    bb = backbones.create_backbone("timm/convnext_atto", 4, weights="none", image_size=32)
    with pytest.raises(UserError, match=r"--in-channels 2: timm/convnext_atto does not read the image with one RGB"):
        channels.adapt_first_conv(bb.model, replace(bb.spec, first_conv=""), 2)


def test_grad_cam_reads_the_patch_grid_after_register_tokens():
    bb = backbones.create_backbone("timm/vit_small_patch14_reg4_dinov2", 4, weights="none", image_size=28)
    assert (bb.spec.cam_layer, bb.spec.cam_layout) == ("blocks.-1.norm1", "tokens:5")  # class + 4 registers
    x, _ = _batch(28)
    maps = gradcam.grad_cam(bb.model, bb.spec, x[:1], [0, 3])
    assert maps.shape == (2, 28, 28) and maps.max() <= 1


def test_weights_without_a_classifier_of_their_own_measure_no_forgetting_and_estimate_no_fisher(tiny):
    spec = backbones.get_spec("timm/vit_small_patch14_dinov2.lvd142m")  # self-supervised: no classifier
    assert not spec.imagenet_head
    with pytest.raises(UserError, match=r"--regularizer ewc .*\(weights with their own classifier\)"):
        make_config(data=tiny, backbone=spec.name, image_size=28, strategy="full", regularizer="ewc")
    with pytest.raises(UserError, match="have no classifier of their own"):
        backbones.imagenet_model(spec.name, 28)


@pytest.mark.slow  # peft's import, a run and two exports: ~20 s on 2 cores
def test_a_lora_run_on_a_timm_vit_trains_only_adapters_and_head_and_exports_with_parity(saved, tiny, store):
    # Issue 24's proof: LoRA on a ViT (timm's, through --backbone timm/...), end to end.
    from tl_core.models import adapters
    from tl_core.service import export_run
    from tl_core.store.run_folders import run_folder
    from tl_core.training.checkpoint import Checkpoint

    name, size = SAMPLE["vit"]
    result = train(
        store,
        data=tiny,
        backbone=f"timm/{name}",
        weights=str(saved["vit"]),
        image_size=size,
        strategy="lora",
        lora_rank=4,
        epochs=1,
        lr=0.01,
    )
    assert result.status == "completed", result.error
    run = store.get_run(result.run_id)
    last = Checkpoint.load(run_folder(run) / "last.pt").model
    adapted = {k for k in last if adapters.is_adapter_parameter(k)}
    # Adapters on the attention and MLP projections of every block, nowhere else.
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in adapted} == {"qkv", "proj", "fc1", "fc2"}
    loaded = backbones.create_backbone(f"timm/{name}", 4, weights=str(saved["vit"]), image_size=size).model
    pretrained = loaded.state_dict()
    head = {k for k in pretrained if k.startswith(tuple(n + "." for n in ("head", "fc", "classifier")))}
    assert head, "the new head's parameters are found by their module's name"
    for key, value in last.items():
        plain = key.replace(".base_layer.", ".")
        if key not in adapted and plain not in head:
            assert torch.equal(value, pretrained[plain]), f"{key} changed"  # the ViT itself stays as loaded
    n_trained = sum(last[k].numel() for k in adapted) + sum(pretrained[k].numel() for k in head)
    epoch = store.epoch_metrics([run.id])[run.id][0]
    assert epoch["trainable_params"] == n_trained and 0 < epoch["trainable_share"] < 0.2
    best = Checkpoint.load(run_folder(run) / "best.pt").model  # adapters merged: the plain ViT
    assert not any(adapters.is_adapter_parameter(k) or ".base_layer." in k for k in best)
    for fmt in ("torchscript", "onnx"):
        r = export_run(store, run.id, fmt)
        assert r["passed"] and r["top1_agreement"] == 1.0, r
