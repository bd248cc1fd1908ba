"""Beyond the strategies, through the training loop: terms of the loss (L2-SP, EWC, DANN, MMD),
the target domain, layer drift, forgetting, gradient accumulation and activation checkpointing.
(The terms' own mathematics is proved in test_losses.py, forgetting's in test_forgetting.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from tqdm import tqdm

from tl_core.config import make_config
from tl_core.data.demo import write_demo_data
from tl_core.errors import UserError
from tl_core.models.backbones import LayerGroup
from tl_core.service import compare, results
from tl_core.training import gpu_memory
from tl_core.training.adaptation import make_adaptation
from tl_core.training.finetuning import Phase, sync_param_groups
from tl_core.training.loop import train_one_epoch
from tl_core.training.run import train_run
from tl_core.training.terms import FeatureTap, Terms

from .helpers import stop_in_epoch, train

# --- gradient accumulation ----------------------------------------------------------------------


def _one_epoch(model: nn.Module, batches: list, accumulate: int) -> None:
    cfg = make_config(data="unused", accumulate=accumulate, schedule="constant", epochs=1)
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "name": "all", "peak_lr": 0.05}], lr=0.05)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_one_epoch(
        model,
        batches,
        optimizer,
        nn.CrossEntropyLoss(),
        cfg,
        torch.device("cpu"),
        None,
        scaler,
        Phase(0, 1),
        0,
        tqdm(disable=True),
        lambda: False,
    )


def test_accumulating_two_half_batches_is_one_full_batch_update_without_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    full, halves, stepped_twice = (copy.deepcopy(model) for _ in range(3))
    _one_epoch(full, [(x, y)], accumulate=1)
    _one_epoch(halves, [(x[:4], y[:4]), (x[4:], y[4:])], accumulate=2)
    _one_epoch(stepped_twice, [(x[:4], y[:4]), (x[4:], y[4:])], accumulate=1)
    for a, b, _, w0 in zip(full.parameters(), halves.parameters(), stepped_twice.parameters(), model.parameters()):
        assert not torch.equal(a, w0)  # a step was taken
        # Equal up to fp32 summation order (the mean of two half-batch means vs one mean of 8).
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    # The control: without accumulation two half-batches are two steps, measurably elsewhere.
    assert max((a - c).abs().max().item() for a, c in zip(full.parameters(), stepped_twice.parameters())) > 1e-3


# --- domain adaptation: one forward pass for both domains -----------------------------------------


@pytest.mark.parametrize("adapt", ["dann", "mmd"])
def test_source_and_target_go_through_the_model_in_one_pass_as_dann_does(adapt):
    """tllib's dann.py: x = cat(x_s, x_t); y, f = model(x); split. BatchNorm normalises the two
    domains with one set of statistics, and its running statistics move once, on the mixture."""
    torch.manual_seed(0)
    model, groups = _net()
    reference = copy.deepcopy(model)
    x, y = torch.randn(6, 3, 10, 10), torch.tensor([0, 1, 0, 1, 1, 0])
    target = torch.randn(6, 3, 10, 10) * 3 + 2  # another domain: its own statistics
    adaptation = make_adaptation(adapt, 1.0, 4)
    tap = FeatureTap(groups[-1].parts[0])
    terms = Terms(adaptation=adaptation, tap=tap, target=iter([target]))
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    seen = []
    adaptation.loss = lambda s, t, p, loss=adaptation.loss: seen.append((s.detach(), t.detach())) or loss(s, t, p)
    cfg = make_config(data="unused", schedule="constant", epochs=1)
    optimizer = torch.optim.SGD([{"params": list(model.parameters()), "name": "all", "peak_lr": 0.0}], lr=0.0)
    model.train()
    train_one_epoch(
        model,
        [(x, y)],
        optimizer,
        nn.CrossEntropyLoss(),
        cfg,
        torch.device("cpu"),
        None,
        torch.amp.GradScaler("cpu", enabled=False),
        Phase(0, 1),
        0,
        tqdm(disable=True),
        lambda: False,
        terms=terms,
    )
    assert len(calls) == 1  # one forward pass a step
    reference.train()
    with torch.no_grad():
        features = reference[:4](torch.cat([x, target]))  # the head's input, on the concatenated batch
    for (name, want), got in zip(reference.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(got, want, msg=name)  # running statistics: one update, on the mixture
    ((source_f, target_f),) = seen
    torch.testing.assert_close(source_f, features[:6])
    torch.testing.assert_close(target_f, features[6:])
    tap.close()


# --- activation checkpointing --------------------------------------------------------------------


def _net() -> tuple[nn.Module, list[LayerGroup]]:
    a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    b = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, momentum=None), nn.ReLU())
    head = nn.Linear(4, 2)
    model = nn.Sequential(a, b, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    return model, [LayerGroup("a", [a]), LayerGroup("b", [b]), LayerGroup("head", [head])]


def test_checkpointing_recomputes_the_body_and_changes_neither_gradients_nor_batchnorm_statistics():
    torch.manual_seed(0)
    plain, groups = _net()
    kept, kept_groups = _net()
    kept.load_state_dict(plain.state_dict())
    assert gpu_memory.checkpoint_activations(kept_groups) == 2  # the body's modules, not the head
    calls = []
    kept_groups[0].parts[0][0].register_forward_hook(lambda *_: calls.append(1))  # its conv
    x, y = torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 1, 0])
    for model in (plain, kept):
        model.train()
        for _ in range(2):  # the second batch reads the first's statistics (momentum None: a count)
            nn.functional.cross_entropy(model(x), y).backward()
    assert len(calls) == 4  # each forward ran again in its backward pass: recomputed, not kept
    before = copy.deepcopy(kept.state_dict())
    saved = gpu_memory.activation_memory(kept, x)
    assert saved["with_checkpointing"] < saved["without_checkpointing"]
    for key, value in kept.state_dict().items():  # measuring moved no BatchNorm statistic
        assert torch.equal(value, before[key]), key
    for (name, p), q in zip(plain.named_parameters(), kept.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    for (name, s), t in zip(plain.state_dict().items(), kept.state_dict().values()):
        torch.testing.assert_close(t, s, msg=name)  # running stats and batch counts moved once per batch


# --- the run's settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, says",
    [
        (dict(adapt="dann"), "--adapt dann needs --target-data"),
        (dict(regularizer="l2sp", strategy="scratch"), "this run starts from none"),
        (dict(regularizer="ewc", weights="/some/file.pt"), "--regularizer ewc"),
        (dict(regularizer="ewc", in_channels=1), "--in-channels 3"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_what_to_do(settings, says):
    with pytest.raises(UserError, match=says):
        make_config(data="unused", **settings)


def test_a_config_without_the_new_settings_keeps_its_fingerprint():
    # Computed before these settings existed: checkpoints written then must still resume. (Their
    # configs hold cudnn_benchmark "on", the default then; it is "auto" since.)
    assert make_config(data="x", cudnn_benchmark="on").fingerprint() == "a77493380122f929"
    assert make_config(data="x", cudnn_benchmark="on", accumulate=2).fingerprint() != "a77493380122f929"


def test_a_regularizer_takes_weight_decay_off_the_model_and_a_discriminator_keeps_it():
    cfg = make_config(data="unused", regularizer="l2sp", weight_decay=0.05, strategy="full")
    _, groups = _net()
    extra = [LayerGroup("domain", [nn.Linear(4, 1)])]
    optimizer = sync_param_groups(None, cfg, groups, 0, [0.1, 0.1, 1.0], extra)
    decay = {pg["name"]: pg["weight_decay"] for pg in optimizer.param_groups}
    assert decay == {
        "a": 0.0,
        "a/no_decay": 0.0,
        "b": 0.0,
        "b/no_decay": 0.0,
        "head": 0.0,
        "head/no_decay": 0.0,
        "domain": 0.05,
        "domain/no_decay": 0.0,
    }
    plain = sync_param_groups(None, make_config(data="unused", weight_decay=0.05), groups, 0, [0.1, 0.1, 1.0])
    assert {pg["name"]: pg["weight_decay"] for pg in plain.param_groups} == {
        "a": 0.05,
        "a/no_decay": 0.0,
        "b": 0.05,
        "b/no_decay": 0.0,
        "head": 0.05,
        "head/no_decay": 0.0,
    }


def test_weight_decay_spares_norms_biases_and_embeddings_as_timm_does():
    """timm's param_groups_weight_decay: 1-D parameters (norm weights and biases, biases) get no
    decay, nor do ViT's class token and position embedding; convolution and linear weights do.
    Each layer group is two optimizer groups with unique names, at the layer group's one LR."""
    _, groups = _net()
    token = nn.Parameter(torch.zeros(1, 1, 4))  # a bare parameter part, as ViT's stem lists them
    groups[0].parts.append(token)
    cfg = make_config(data="unused", weight_decay=0.05, lr=1e-2, strategy="full")
    optimizer = sync_param_groups(None, cfg, groups, 0, [0.1, 0.1, 1.0])
    names = [pg["name"] for pg in optimizer.param_groups]
    assert names == ["a", "a/no_decay", "b", "b/no_decay", "head", "head/no_decay"] and len(set(names)) == 6
    conv, bn = groups[0].parts[0][0], groups[0].parts[0][1]
    by_name = {pg["name"]: {id(p) for p in pg["params"]} for pg in optimizer.param_groups}
    assert by_name["a"] == {id(conv.weight)}
    assert by_name["a/no_decay"] == {id(conv.bias), id(bn.weight), id(bn.bias), id(token)}
    assert {pg["group"]: pg["peak_lr"] for pg in optimizer.param_groups} == pytest.approx(
        {"a": 1e-3, "b": 1e-3, "head": 1e-2}
    )
    # One AdamW step with no gradient anywhere but decay: only the decayed weights shrink.
    before = {n: p.detach().clone() for n, p in (("conv", conv.weight), ("gamma", bn.weight), ("token", token))}
    for p in (p for g in groups for p in g.parameters()):
        p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.testing.assert_close(conv.weight, before["conv"] * (1 - 1e-3 * 0.05))
    assert torch.equal(bn.weight, before["gamma"]) and torch.equal(token, before["token"])


def _legacy_optimizer(cfg, groups, n, multipliers):
    """The optimizer as sync_param_groups built it before the split: one group per layer group,
    named after it, every parameter at the run's weight decay."""
    return torch.optim.AdamW(
        [
            {
                "params": g.parameters(),
                "name": g.name,
                "peak_lr": cfg.base_lr * m,
                "lr": cfg.base_lr * m,
                "weight_decay": cfg.weight_decay,
            }
            for g, m in zip(groups[n:], multipliers)
        ],
        lr=cfg.base_lr,
        weight_decay=cfg.weight_decay,
    )


def test_a_checkpoint_of_either_layout_restores_its_optimizer_exactly():
    from tl_core.training.finetuning import restore_optimizer

    torch.manual_seed(0)
    model, groups = _net()
    x, y = torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 1, 0])
    cfg = make_config(data="unused", weight_decay=0.05, strategy="partial", unfreeze=1)
    for optimizer in (
        sync_param_groups(None, cfg, groups, 1, [0.5, 1.0]),
        _legacy_optimizer(cfg, groups, 1, [0.5, 1.0]),
    ):
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        saved = copy.deepcopy(optimizer.state_dict())
        restored = restore_optimizer(cfg, groups, 1, [0.5, 1.0], [], saved)
        assert _same(restored.state_dict(), saved)
        # Unfreezing later keeps the layout the run started with: a new run's split, an old run's one group.
        restored = sync_param_groups(restored, cfg, groups, 0, [0.25, 0.5, 1.0])
        names = [pg["name"] for pg in restored.param_groups]
        if "group" in saved["param_groups"][0]:
            assert names == ["a", "a/no_decay", "b", "b/no_decay", "head", "head/no_decay"]
        else:
            assert names == ["a", "b", "head"] and {pg["weight_decay"] for pg in restored.param_groups} == {0.05}
        model.zero_grad(set_to_none=True)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_adapting_a_frozen_body_is_warned_about():
    cfg = make_config(data="unused", target_data="t", adapt="mmd", strategy="feature_extraction")
    assert any("--adapt mmd" in w and "frozen" in w for w in cfg.warnings())
    assert not any(
        "--adapt" in w for w in make_config(data="unused", target_data="t", adapt="mmd", strategy="full").warnings()
    )


# --- through the loop ----------------------------------------------------------------------------


def test_drift_is_exactly_zero_for_frozen_groups_and_the_penalty_is_logged(store, tiny):
    r = train(store, data=tiny, strategy="partial", unfreeze=2, epochs=2, regularizer="l2sp")
    assert r.status == "completed", r.error
    drift = results.group_drift(store, r.run_id)
    groups = store.get_run(r.run_id).summary["groups"]
    assert list(drift) == groups and all(len(v) == 2 for v in drift.values())
    frozen, trained = groups[:-3], groups[-3:]
    assert all(v == 0.0 for g in frozen for v in drift[g])
    assert all(v > 0 for g in trained for v in drift[g])
    epochs = store.epoch_metrics([r.run_id])[r.run_id]
    assert all(e["reg_penalty"] > 0 and 0 < e["reg_share"] < 1 for e in epochs.values())
    # AdamW (the default) rescales the pull per weight: the run says so, and what gives the paper's form.
    said = store.get_run(r.run_id).summary["regularizer"]
    assert said["name"] == "l2sp" and said["optimizer"] == "adamw"
    assert "rescales its pull per weight" in said["pull"] and "--optimizer sgd" in said["pull"]


def test_ewc_estimates_its_fisher_on_the_training_images_and_says_from_what(store, tiny):
    r = train(store, data=tiny, strategy="partial", epochs=1, regularizer="ewc", fisher_images=12)
    assert r.status == "completed", r.error
    summary = store.get_run(r.run_id).summary
    assert summary["fisher"]["images"] == 12 and "no source data" in summary["fisher"]["source"]
    assert summary["forgetting"]["images"] == summary["val_images"]
    assert 0 <= summary["forgetting"]["agreement"] <= 1


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    out = tmp_path_factory.mktemp("domains")
    write_demo_data(out, datasets=("digits", "digits_target"), per_class=6, size=28)
    return out


def test_source_only_dann_and_mmd_compare_on_the_demo_domain_pair(store, domains):
    """The issue's comparison, on the defaults a CPU runs (one epoch), target accuracy recorded for each."""
    ids = {}
    for adapt in ("none", "dann", "mmd"):
        cfg = make_config(
            data=str(domains / "digits"),
            target_data=str(domains / "digits_target"),
            adapt=adapt,
            strategy="partial",
            epochs=1,
            experiment="domains",
            workers=0,
        )
        run = store.create_run(cfg.model_dump(), cfg.experiment, cfg.name, status="running")
        result = train_run(store, run.id, progress=False)
        assert result.status == "completed", result.error
        ids[adapt] = run.id
    for adapt, run_id in ids.items():
        run = store.get_run(run_id)
        (epoch,) = store.epoch_metrics([run_id])[run_id].values()
        assert 0 <= epoch["target_acc"] <= 1 and run.summary["target"]["labelled"]
        assert run.summary["target"]["images"] == 60
        assert ("domain_loss" in epoch) == (adapt != "none")
        assert ("domain_acc" in epoch) == (adapt == "dann")
    runs = [store.get_run(i) for i in ids.values()]
    points = compare.forgetting_points(runs, store.epoch_metrics([r.id for r in runs]))["points"]
    assert len(points) == 3 and all(
        p["target_acc"] is not None for p in points
    )  # knowledge kept next to target accuracy, one point per run


def test_a_target_folder_with_foreign_classes_is_refused_clearly(store, domains, tmp_path):
    (tmp_path / "cats").mkdir()
    r = train(store, data=str(domains / "digits"), target_data=str(tmp_path), adapt="mmd", strategy="full", epochs=1)
    assert r.status == "failed" and "are not classes of the source" in r.error


def _split_target(domains, root, labelled_train: bool):
    """digits_target laid out as train/ (2 images a class; in class folders or loose) + val/ (the
    other 4 a class, in class folders)."""
    for folder in sorted((domains / "digits_target").iterdir()):
        images = sorted(folder.iterdir())
        for k, image in enumerate(images):
            where = (root / "train" / (folder.name if labelled_train else "")) if k < 2 else root / "val" / folder.name
            where.mkdir(parents=True, exist_ok=True)
            (where / f"{folder.name}_{image.name}").write_bytes(image.read_bytes())
    return root


@pytest.mark.parametrize("labelled_train", [True, False])
def test_a_target_laid_out_as_train_and_val_adapts_on_train_and_evaluates_on_val(domains, tmp_path, labelled_train):
    from tl_core.data.folders import scan_target

    root = _split_target(domains, tmp_path / "target", labelled_train)
    classes = [str(d) for d in range(10)]
    index, labelled = scan_target(root, classes)
    assert labelled and index.layout == "split"
    assert len(index.items["train"]) == 20 and len(index.items["val"]) == 40
    assert all("/train/" in it.path for it in index.items["train"])
    assert all("/val/" in it.path for it in index.items["val"])
    assert sorted({it.label for it in index.items["val"]}) == list(range(10))
    assert all(classes[it.label] == it.path.split("/")[-2] for it in index.items["val"])
    # val/ without class folders: nothing to measure target accuracy with
    loose = tmp_path / "loose"
    (loose / "train").mkdir(parents=True)
    (loose / "val").mkdir()
    for k, image in enumerate(sorted((domains / "digits_target" / "3").iterdir())):
        (loose / ("train" if k < 3 else "val") / image.name).write_bytes(image.read_bytes())
    assert scan_target(loose, classes)[1] is False
    (root / "val" / "cats").mkdir()
    with pytest.raises(UserError, match=r"val: its folders \['cats'\] are not classes of the source"):
        scan_target(root, classes)


def test_a_run_adapts_on_the_targets_train_split_and_measures_on_its_val_split(store, domains, tmp_path):
    root = _split_target(domains, tmp_path / "target", labelled_train=False)
    r = train(store, data=str(domains / "digits"), target_data=str(root), adapt="mmd", strategy="full", epochs=1)
    assert r.status == "completed", r.error
    target = store.get_run(r.run_id).summary["target"]
    assert (target["layout"], target["labelled"]) == ("split", True)
    assert (target["adapted_on"], target["evaluated_on"]) == (20, 40)
    (epoch,) = store.epoch_metrics([r.run_id])[r.run_id].values()
    assert 0 <= epoch["target_acc"] <= 1 and round(epoch["target_acc"] * 40) == pytest.approx(epoch["target_acc"] * 40)


def test_memory_levers_train_a_real_backbone_and_are_recorded(store, tiny):
    r = train(store, data=tiny, strategy="full", epochs=1, checkpointing="on", accumulate=2)
    assert r.status == "completed", r.error
    memory_note = store.get_run(r.run_id).summary["memory"]
    assert memory_note["effective_batch"] == 16 and memory_note["checkpointed_modules"] > 0
    saved = memory_note["activations_mb"]
    assert 0 < saved["with_checkpointing"] < saved["without_checkpointing"] / 2
    (epoch,) = store.epoch_metrics([r.run_id])[r.run_id].values()
    assert epoch["peak_memory_mb"] > 0 and all(
        epoch[f"drift/{g}"] > 0 for g in store.get_run(r.run_id).summary["groups"]
    )


def test_a_dann_run_resumes_as_if_it_never_stopped(store, domains, monkeypatch):
    """The discriminator, its optimizer state and the target batches of each epoch come back, from
    the middle of an epoch (the target batches of the source batches done before the stop are
    drawn again and passed over)."""
    settings = dict(
        data=str(domains / "digits"),
        target_data=str(domains / "digits_target"),
        adapt="dann",
        strategy="full",
        epochs=2,
        seed=3,
        regularizer="l2sp",
    )
    whole = train(store, **settings)
    with monkeypatch.context() as m:
        stop_in_epoch(m, 1, 2)
        stopped = train(store, **settings)
    assert stopped.status == "queued" and stopped.epochs == 1
    resumed = train_run(store, stopped.run_id, progress=False)
    assert resumed.status == "completed", resumed.error
    a, b = (store.epoch_metrics([r.run_id])[r.run_id][1] for r in (whole, resumed))
    for key in ("train_loss", "val_acc", "target_acc", "domain_loss", "domain_acc", "reg_penalty", "drift/head"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key


def test_a_missing_target_folder_is_refused_before_queueing(domains, tmp_path):
    from tl_core.service import runs

    cfg = make_config(data=str(domains / "digits"), target_data=str(tmp_path / "nowhere"), adapt="mmd", strategy="full")
    with pytest.raises(UserError, match="--target-data .*nowhere: no such folder"):
        runs.check_run(cfg)
    runs.check_run(cfg.model_copy(update={"target_data": str(domains / "digits_target")}))


def test_probing_images_that_are_not_rgb_is_refused_with_what_to_do(tiny):
    from tl_core.analysis.data_probe import probe

    with pytest.raises(UserError, match="--in-channels 4: the probe measures"):
        probe(make_config(data=tiny, in_channels=4))
