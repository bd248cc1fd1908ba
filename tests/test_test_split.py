"""The test split: a run is chosen on val and reported once on test (data/splits.py, training/run.py's _test_metrics).

Splits: a train/val/test folder, a train/test folder (val carved from train) and --test-fraction
(carved first, stratified, by the split seed; 0 splits exactly as before); test images never
reach the LR finder, the probe, the feature cache or the epoch loop; the test block of a run's
summary and `test_acc` in `show --json`; macro-F1 and balanced accuracy (metrics.py, against
scikit-learn); --class-weights auto; a resume that still owes its test pass; the New run form,
the runs table and the run's page.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score
from torch import nn

from tl_core import service
from tl_core.analysis import lr_finder, metrics
from tl_core.analysis.data_probe import probe
from tl_core.config import make_config
from tl_core.data import decode_cache, folders
from tl_core.data.folders import Item, scan_dataset
from tl_core.data.splits import Splits, class_weights, split_dataset, split_fingerprint
from tl_core.errors import UserError
from tl_core.training import held_out, loop, run_data
from tl_core.training import run as T

from .helpers import train
from .test_app import demo_root, env, launch, make_run, no_exception, page  # noqa: F401 (fixtures)
from .test_cli import cli

CPU = torch.device("cpu")
BLOCK = {"acc", "loss", "macro_f1", "balanced_acc", "images", "epoch", "classes"}


def _paths(items) -> set[str]:
    return {it.path for it in items}


# --- splitting ----------------------------------------------------------------------------------


def _index(layout: str) -> folders.DatasetIndex:
    """Three classes of 7, 12 and 30 images (no files: splitting reads the index only)."""
    classes, counts = ["ant", "bee", "cat"], [7, 12, 30]
    if layout == "folders":
        items = {
            "all": [
                Item(f"/d/{c}/{i:03d}.png", label)
                for label, (c, n) in enumerate(zip(classes, counts))
                for i in range(n)
            ]
        }
    else:
        items = {
            "train": [
                Item(f"/d/train/{c}/{i:03d}.png", label)
                for label, (c, n) in enumerate(zip(classes, counts))
                for i in range(n)
            ],
            "val": [Item(f"/d/val/{c}/{i:03d}.png", label) for label, c in enumerate(classes) for i in range(3)],
        }
    return folders.DatasetIndex("/d", layout, classes, items)


def _digest(items) -> str:
    return hashlib.sha256("\n".join(it.path for it in items).encode()).hexdigest()[:16]


# (layout, split seed, val fraction, train fraction): (split fingerprint, train, val) as split_dataset
# gave them before test splits existed (computed on the code of commit a2f8622).
BEFORE = {
    ("folders", 0, 0.2, 1.0): ("aff74dfda47b0990", "b7935189edf9f0a5", "8b35b15ca712ba49"),
    ("folders", 1, 0.3, 0.5): ("c2a4678f58e4b07e", "04b1798124f662a5", "666718a407e1c16f"),
    ("folders", 7, 0.2, 0.25): ("af07ca5dd89317b5", "012c580f0d8a54d7", "fa5bc7243d977e21"),
    ("split", 0, 0.2, 1.0): ("be5f651373d412e3", "c5f2b72234b4ce80", "21e0cc83a8f24fa4"),
    ("split", 1, 0.3, 0.5): ("be5f651373d412e3", "3dbcef3e51a55226", "21e0cc83a8f24fa4"),
    ("split", 7, 0.2, 0.25): ("be5f651373d412e3", "cdf83b439644b3c6", "21e0cc83a8f24fa4"),
}


@pytest.mark.parametrize("key", list(BEFORE))
def test_test_fraction_zero_splits_exactly_as_before(key):
    layout, seed, val_fraction, train_fraction = key
    for splits in (
        split_dataset(_index(layout), val_fraction, train_fraction, seed),
        split_dataset(_index(layout), val_fraction, train_fraction, seed, test_fraction=0.0),
    ):
        assert splits.test == []
        assert (split_fingerprint(splits), _digest(splits.train), _digest(splits.val)) == BEFORE[key]


def test_test_fraction_is_carved_first_stratified_seeded_and_disjoint():
    index = _index("folders")
    s = split_dataset(index, 0.2, 1.0, 3, test_fraction=0.2)
    by_class = lambda items: [sum(it.label == c for it in items) for c in range(3)]  # noqa: E731
    assert by_class(s.test) == [1, 2, 6]  # max(1, round(0.2 n)) of 7, 12, 30
    assert not _paths(s.test) & (_paths(s.train) | _paths(s.val))
    assert _paths(s.test) | _paths(s.train) | _paths(s.val) == _paths(index.items["all"])
    # val comes from the rest, at val_fraction of it (at least one, never all): 6, 10 and 24 remain
    assert by_class(s.val) == [1, 2, 5]
    # carved first: the same test images whatever the val and train fractions
    other = split_dataset(index, 0.4, 0.5, 3, test_fraction=0.2)
    assert _paths(other.test) == _paths(s.test) and not _paths(other.test) & (_paths(other.train) | _paths(other.val))
    # by the split seed, and repeatable under it
    assert _paths(split_dataset(index, 0.2, 1.0, 3, test_fraction=0.2).test) == _paths(s.test)
    assert _paths(split_dataset(index, 0.2, 1.0, 4, test_fraction=0.2).test) != _paths(s.test)
    # the split's fingerprint covers the test images too
    without = Splits(s.classes, s.train, s.val, index)
    assert split_fingerprint(s) != split_fingerprint(without)
    moved = Splits(s.classes, s.train, s.val, index, s.test[1:] + [s.train[0]])
    assert split_fingerprint(moved) != split_fingerprint(s)


def test_a_users_train_and_val_keep_their_val_and_give_test_from_train():
    index = _index("split")
    s = split_dataset(index, 0.2, 1.0, 0, test_fraction=0.25)
    assert s.val == index.items["val"]
    assert _paths(s.test) <= _paths(index.items["train"]) and not _paths(s.test) & _paths(s.train)
    assert len(s.test) == 2 + 3 + 8  # round(0.25 n) of 7, 12, 30 training images


def _folder(tiny: str, root: Path, val: bool) -> Path:
    """tiny's images as train/ (4 per class), val/ (2) and test/ (2); without val/, train/ takes 6."""
    for cls in sorted(p.name for p in Path(tiny).iterdir()):
        files = sorted((Path(tiny) / cls).iterdir())
        parts = (
            {"train": files[:4], "val": files[4:6], "test": files[6:8]}
            if val
            else {"train": files[:6], "test": files[6:8]}
        )
        for split, chosen in parts.items():
            (root / split / cls).mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, root / split / cls / f.name)
    return root


def test_a_train_val_test_folder_and_a_train_test_folder_give_three_splits(tiny, tmp_path):
    full = _folder(tiny, tmp_path / "full", val=True)
    index = scan_dataset(full)
    s = split_dataset(index, 0.2)
    assert index.layout == "split" and len(s.train) == 16 and len(s.val) == 8 and len(s.test) == 8
    assert all(Path(it.path).parts[-3] == "test" for it in s.test)
    no_val = _folder(tiny, tmp_path / "no_val", val=False)
    index = scan_dataset(no_val)
    s = split_dataset(index, 0.34, seed=0)
    assert index.layout == "train_test"
    assert all(Path(it.path).parts[-3] == "train" for it in s.train + s.val)  # val carved from train/ alone
    assert [sum(it.label == c for it in s.val) for c in range(4)] == [2, 2, 2, 2]
    assert _paths(s.test) == _paths(index.items["test"]) and len(s.test) == 8


def test_bad_test_splits_say_what_to_do(tiny, tmp_path):
    with pytest.raises(
        UserError,
        match=r"--test-fraction 0.9: class '\w+' has 8 images, and holding 7 out for test "
        r"leaves 1 .*lower --test-fraction or add images",
    ):
        split_dataset(scan_dataset(tiny), 0.2, test_fraction=0.9)
    full = _folder(tiny, tmp_path / "full", val=True)
    with pytest.raises(UserError, match="has its own test/ folder.*leave --test-fraction at 0"):
        split_dataset(scan_dataset(full), 0.2, test_fraction=0.2)
    first = sorted((full / "test").iterdir())[0]
    (full / "test" / "okapi").mkdir()
    shutil.copy(sorted(first.iterdir())[0], full / "test" / "okapi" / "a.png")
    with pytest.raises(
        UserError,
        match=r"train/ and test/ in .* have different classes \(only in train: none; "
        r"only in test: \['okapi'\]\)",
    ):
        scan_dataset(full)
    with pytest.raises(UserError, match="--test-fraction"):
        make_config(data=tiny, test_fraction=1.0)


# --- the metrics ----------------------------------------------------------------------------------


def test_macro_f1_and_balanced_accuracy_on_a_known_confusion_matrix():
    # class 2 is predicted once but never a label; class 3 is neither (left out of both means)
    confusion = [[5, 1, 0, 0], [2, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # F1: class 0 2(5/7)(5/6)/(5/7 + 5/6) = 10/13, class 1 1/2, class 2 0; recall: 5/6, 2/5
    assert metrics.macro_f1(confusion) == pytest.approx((10 / 13 + 1 / 2 + 0) / 3)
    assert metrics.balanced_accuracy(confusion) == pytest.approx((5 / 6 + 2 / 5) / 2)
    assert metrics.accuracy(confusion) == pytest.approx(7 / 11)
    y_true = [t for t, row in enumerate(confusion) for p, n in enumerate(row) for _ in range(n)]
    y_pred = [p for t, row in enumerate(confusion) for p, n in enumerate(row) for _ in range(n)]
    with pytest.warns(UserWarning):  # scikit-learn warns of the class without a label, and leaves it out too
        assert metrics.balanced_accuracy(confusion) == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert metrics.macro_f1(confusion) == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    block = metrics.scores(confusion, ["a", "b", "c", "d"])
    assert block["images"] == 11 and block["acc"] == pytest.approx(7 / 11)
    assert [c["class_name"] for c in block["classes"]] == ["a", "b", "c", "d"]
    assert block["classes"][1]["recall"] == pytest.approx(2 / 5) and block["classes"][0]["support"] == 6


def test_class_weights_auto_are_inverse_frequency_with_mean_one_and_weight_the_loss():
    items = [Item(f"{c}{i}", c) for c, n in enumerate((2, 6, 12)) for i in range(n)]
    weights = class_weights(items, ["a", "b", "c"])
    assert weights == pytest.approx([2.0, 2 / 3, 1 / 3]) and sum(weights) / 3 == pytest.approx(1.0)
    d = SimpleNamespace(splits=Splits(["a", "b", "c"], items, [], None), classes=["a", "b", "c"])
    plain, none = run_data.training_loss(make_config(data="x"), d, CPU)
    weighted, record = run_data.training_loss(make_config(data="x", class_weights="auto"), d, CPU)
    assert none is None and record == {"mode": "auto", "weights": dict(zip("abc", weights))}
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 1, 2, 0])
    each = nn.functional.cross_entropy(logits, y, reduction="none")
    w = torch.tensor(weights)[y]
    assert plain(logits, y).item() == pytest.approx(each.mean().item())
    assert weighted(logits, y).item() == pytest.approx(((w * each).sum() / w.sum()).item())
    assert weighted(logits, y).item() != pytest.approx(plain(logits, y).item(), rel=1e-3)
    with pytest.raises(UserError, match="no training images"):
        class_weights(items[:2], ["a", "b", "c"])


def test_class_weights_reach_the_training_loss_and_are_recorded(tiny, tmp_path, store):
    skewed = tmp_path / "skewed"
    shutil.copytree(tiny, skewed)
    for cls in sorted(skewed.iterdir())[:2]:  # two classes of 3 images beside two of 8
        for f in sorted(cls.iterdir())[3:]:
            f.unlink()
    runs = {w: train(store, data=str(skewed), epochs=1, class_weights=w) for w in ("none", "auto")}
    loss = {w: store.epoch_metrics([r.run_id])[r.run_id][0]["train_loss"] for w, r in runs.items()}
    assert loss["none"] != pytest.approx(loss["auto"], rel=1e-3)
    run = store.get_run(runs["auto"].run_id)
    index = scan_dataset(skewed)
    expected = class_weights(split_dataset(index, 0.2).train, index.classes)
    assert run.summary["class_weights"] == {"mode": "auto", "weights": dict(zip(index.classes, expected))}
    assert expected[0] > 1 > expected[-1]
    # no test split: neither test block, and no test_acc
    for r in runs.values():
        got = store.get_run(r.run_id)
        assert "test" not in got.summary and "test_last" not in got.summary
        assert got.test_acc is None and got.to_dict()["test_acc"] is None
    assert "class_weights" not in store.get_run(runs["none"].run_id).summary


# --- nothing chooses on test --------------------------------------------------------------------------


def _spy_on_loaded_images(monkeypatch) -> list[set[str]]:
    """Every set of images a loader or the feature cache is built over (decode_cache.DatasetRows.rows)."""
    seen: list[set[str]] = []
    original = decode_cache.DatasetRows.rows

    def rows(self, items):
        seen.append(_paths(items))
        return original(self, items)

    monkeypatch.setattr(decode_cache.DatasetRows, "rows", rows)
    return seen


def test_the_lr_finder_and_the_probe_never_see_a_test_image(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "runs"))
    cfg = make_config(data=tiny, image_size=32, batch_size=8, workers=0, epochs=2, test_fraction=0.25)
    test = _paths(split_dataset(scan_dataset(tiny), 0.2, 1.0, 0, test_fraction=0.25).test)
    seen = _spy_on_loaded_images(monkeypatch)
    lr_finder.lr_find(cfg, start_lr=1e-5, end_lr=1.0, num_iter=5)
    found = probe(cfg)
    loaded = set().union(*seen)
    assert len(loaded) == 24 and not loaded & test
    assert found.probed_images == {"train": 20, "val": 4}
    seen.clear()  # the spy would see them: without a test split these images are trained on
    lr_finder.lr_find(cfg.model_copy(update={"test_fraction": 0.0}), start_lr=1e-5, end_lr=1.0, num_iter=5)
    assert test <= set().union(*seen)


def test_training_reads_the_test_images_only_in_its_one_test_pass(tiny, store, monkeypatch):
    seen = _spy_on_loaded_images(monkeypatch)
    test_pass_at: list[int] = []
    original = held_out.score_test_split

    def test_pass(*args, **kwargs):
        test_pass_at.append(len(seen))
        out = original(*args, **kwargs)
        test_pass_at.append(len(seen))
        return out

    monkeypatch.setattr(held_out, "score_test_split", test_pass)
    result = train(store, data=tiny, epochs=3, test_fraction=0.25, strategy="feature_extraction")
    assert result.status == "completed" and len(test_pass_at) == 2  # called once
    test = _paths(split_dataset(scan_dataset(tiny), 0.2, 1.0, 0, test_fraction=0.25).test)
    start, end = test_pass_at
    before, during = set().union(*seen[:start]), set().union(*seen[start:end])
    assert before and not before & test  # loaders, the feature cache's train and val features
    assert during == test
    run = store.get_run(result.run_id)
    predicted = {p.path for p in store.predictions(run.id)}
    assert len(predicted) == run.summary["val_images"] == 4 and not predicted & test
    # the test block: the epoch chosen on val, and the last epoch's where that is another
    block = run.summary["test"]
    assert set(block) == BLOCK and block["images"] == 8 and block["epoch"] == run.best_epoch_number
    assert ("test_last" in run.summary) == (run.best_epoch_number != 3)
    assert run.test_acc == block["acc"] and 0 <= block["acc"] <= 1
    # the per-epoch scores on val, from the same formula as the stored per-class results
    epochs = store.epoch_metrics([run.id])[run.id]
    best = epochs[run.best_epoch]
    confusion = [c.confusion for c in store.class_metrics(run.id)]
    assert best["val_balanced_acc"] == pytest.approx(metrics.balanced_accuracy(confusion))
    assert best["val_macro_f1"] == pytest.approx(metrics.macro_f1(confusion))
    assert all({"val_macro_f1", "val_balanced_acc"} <= set(m) for m in epochs.values())


def test_the_test_pass_scores_the_checkpoint_chosen_on_val_and_leaves_the_last_model(tiny, tmp_path):
    cfg = make_config(data=tiny, image_size=32, batch_size=8, workers=0, epochs=3, test_fraction=0.25)
    d = run_data.load_data(cfg, CPU)
    bb = run_data.load_model(cfg, len(d.classes), CPU)
    head = bb.model.get_submodule(bb.spec.head_path)

    def answer(cls: int) -> None:  # a head that names class `cls` for every image
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            head.bias[cls] = 10.0

    answer(2)
    torch.save({"model": bb.model.state_dict(), "epoch": 0}, tmp_path / "best.pt")
    answer(1)
    last = copy.deepcopy(bb.model.state_dict())
    out = held_out.score_test_split(cfg, bb.model, d, CPU, None, nn.CrossEntropyLoss(), tmp_path / "best.pt")
    assert set(out) == {"test", "test_last"} and set(out["test"]) == set(out["test_last"]) == BLOCK
    assert out["test"]["epoch"] == 1 and out["test_last"]["epoch"] == 3
    assert [c["recall"] for c in out["test"]["classes"]] == [0.0, 0.0, 1.0, 0.0]
    assert [c["recall"] for c in out["test_last"]["classes"]] == [0.0, 1.0, 0.0, 0.0]
    assert out["test"]["acc"] == out["test"]["balanced_acc"] == 0.25 and out["test"]["images"] == 8
    assert out["test"]["macro_f1"] == pytest.approx(2 * 0.25 / 1.25 / 4)  # class 2's F1, over 4 classes
    assert all(torch.equal(v, last[k]) for k, v in bb.model.state_dict().items())  # the last epoch's weights
    torch.save({"model": bb.model.state_dict(), "epoch": 2}, tmp_path / "best.pt")  # the last is the best
    assert set(held_out.score_test_split(cfg, bb.model, d, CPU, None, nn.CrossEntropyLoss(), tmp_path / "best.pt")) == {
        "test"
    }
    no_test = run_data.load_data(cfg.model_copy(update={"test_fraction": 0.0}), CPU)
    assert (
        held_out.score_test_split(cfg, bb.model, no_test, CPU, None, nn.CrossEntropyLoss(), tmp_path / "best.pt") == {}
    )


def test_a_run_that_stopped_before_its_test_pass_gets_it_on_resume(tiny, store, monkeypatch):
    original = held_out.score_test_split

    def lost(*args, **kwargs):
        raise RuntimeError("the machine went down before the test pass")

    monkeypatch.setattr(held_out, "score_test_split", lost)
    stopped = train(store, data=tiny, epochs=2, test_fraction=0.25)
    assert stopped.status == "failed" and stopped.epochs == 2 and "test" not in store.get_run(stopped.run_id).summary
    monkeypatch.setattr(held_out, "score_test_split", original)
    trained: list[int] = []
    epoch = loop.train_one_epoch
    monkeypatch.setattr(loop, "train_one_epoch", lambda *a, **k: trained.append(1) or epoch(*a, **k))
    service.resume_run(store, stopped.run_id, here=True)
    result = T.train_run(store, stopped.run_id, progress=False)
    run = store.get_run(stopped.run_id)
    assert result.status == "completed" and trained == [] and run.epochs_done == 2
    assert run.summary["test"]["epoch"] == run.best_epoch_number and run.test_acc is not None


# --- the command line -------------------------------------------------------------------------------


def test_a_test_folder_and_test_fraction_give_test_acc_in_show_json(tiny, tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    folder = _folder(tiny, tmp_path / "three", val=True)
    common = ["--epochs", "2", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--json", "--db", db]
    ids = []
    for source, extra in ((tiny, ["--test-fraction", "0.25"]), (str(folder), [])):
        r = cli("run", "--data", source, *common, *extra, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        show = json.loads(cli("show", str(out["run_id"]), "--json", "--db", db, cwd=tmp_path).stdout)
        block = show["summary"]["test"]
        assert show["test_acc"] == out["test_acc"] == block["acc"] and 0 <= block["acc"] <= 1
        assert set(block) == BLOCK and block["images"] == 8 and block["epoch"] == show["best_epoch"]
        assert len(block["classes"]) == 4 and {"precision", "recall", "f1", "support"} <= set(block["classes"][0])
        assert ("test_last" in show["summary"]) == (show["best_epoch"] != 2)
        assert all(0 <= e["val_macro_f1"] <= 1 and 0 <= e["val_balanced_acc"] <= 1 for e in show["epochs"])
        ids.append(out["run_id"])
    rows = json.loads(cli("runs", "--json", "--db", db, cwd=tmp_path).stdout)["runs"]
    assert all(r["test_acc"] is not None for r in rows) and {r["id"] for r in rows} == set(ids)


def test_dataset_json_reports_three_splits(tiny, tmp_path):
    r = cli("dataset", tiny, "--test-fraction", "0.25", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert (rep["train_images"], rep["val_images"], rep["test_images"]) == (20, 4, 8)
    assert all(c == {"train": 5, "val": 1, "test": 2} for c in rep["per_class"].values())
    rep = json.loads(cli("dataset", str(_folder(tiny, tmp_path / "three", val=True)), "--json", cwd=tmp_path).stdout)
    assert rep["layout"] == "split" and rep["test_split"] == "test/ folder"
    assert all(c == {"train": 4, "val": 2, "test": 2} for c in rep["per_class"].values())
    rep = json.loads(cli("dataset", tiny, "--json", cwd=tmp_path).stdout)
    assert rep["test_images"] == 0 and rep["test_split"] == "none"
    bad = cli("dataset", tiny, "--test-fraction", "0.9", cwd=tmp_path)
    assert bad.returncode == 2 and "lower --test-fraction" in bad.stderr and "Traceback" not in bad.stderr


# --- the dashboard ----------------------------------------------------------------------------------


def test_new_run_shows_three_splits_and_queues_the_test_fraction_and_class_weights(env, demo_root):
    at = no_exception(page("new_run.py").run())
    assert {m.label: m.value for m in at.metric}["Test images"] == "0"
    assert any("No test split" in c.value for c in at.caption)
    at.number_input(key="test_fraction").set_value(0.25)
    at.selectbox(key="class_weights").set_value("auto")
    at = no_exception(at.run())
    shown = {m.label: m.value for m in at.metric}
    assert shown["Test images"] == "30" and int(shown["Train images"]) + int(shown["Val images"]) == 90  # 12 a class
    at = launch(at)
    assert not at.error, [e.value for e in at.error]
    (run,) = env.list_runs()
    assert (run.config["test_fraction"], run.config["class_weights"]) == (0.25, "auto")


def test_the_runs_table_and_run_detail_show_test_accuracy(env):
    run = make_run(env, "held-out", "feature_extraction")
    block = {"acc": 0.625, "loss": 0.9, "macro_f1": 0.6, "balanced_acc": 0.61, "images": 8, "epoch": 3, "classes": []}
    env.update_run(run.id, summary={**run.summary, "test": block})
    assert service.run_row(env.get_run(run.id))["test_acc"] == 0.625
    table = no_exception(page("runs.py").run()).dataframe[0].value
    assert list(table["test_acc"]) == [0.625]
    at = no_exception(page("run_detail.py").run())
    assert {m.label: m.value for m in at.metric}["Test accuracy"] == "62.5%"
