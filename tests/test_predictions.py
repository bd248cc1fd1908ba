"""Predictions stored once per run, by its best epoch's own validation pass: they reproduce the
run's recorded accuracy and confusion matrix exactly, and what one run fixed and broke against
another follows from them image by image."""

from __future__ import annotations

import json

import pytest

from tl_core.analysis import predictions as P
from tl_core.cli import main
from tl_core.errors import UserError
from tl_core.store import Prediction

from .helpers import stop_before_epoch, train


@pytest.mark.parametrize("strategy", ["feature_extraction", "full"])  # cached features, and the whole model
def test_stored_predictions_reproduce_the_recorded_best_accuracy_and_confusion_exactly(store, animals, strategy):
    r = train(store, data=animals, strategy=strategy, epochs=3, batch_size=16)
    run = store.get_run(r.run_id)
    preds = store.predictions(run.id)
    assert len(preds) == run.summary["val_images"] == 60
    assert P.accuracy(preds) == run.best_val_acc  # exactly: the same images and the same division
    assert run.summary["predictions"] == {"epoch": run.best_epoch_number, "images": 60}
    metrics = store.class_metrics(run.id)
    assert P.confusion(preds, len(metrics)).tolist() == [m.confusion for m in metrics]
    val_paths = {p.path for p in preds}
    assert len(val_paths) == 60 and all(p.startswith(animals) for p in val_paths)
    wrong = P.errors(preds)
    assert len(wrong) == sum(not p.correct for p in preds)
    assert [p.loss for p in wrong] == sorted((p.loss for p in wrong), reverse=True)
    for p in preds:  # each image's numbers agree with one another
        assert 0 < p.true_prob <= 1 and p.prob >= p.true_prob - 1e-6
        assert p.loss == pytest.approx(-__import__("math").log(p.true_prob), rel=1e-4, abs=1e-6)
        assert (p.prob == p.true_prob) or not p.correct


def test_a_resumed_run_keeps_the_predictions_of_its_best_epoch(store, tiny, monkeypatch):
    stop_before_epoch(monkeypatch, 2)
    r = train(store, data=tiny, strategy="feature_extraction", epochs=4, lr=3e-3)
    assert store.get_run(r.run_id).status == "cancelled" and store.predictions(r.run_id)
    monkeypatch.undo()
    from tl_core.training.run import train_run

    store.update_run(r.run_id, resume=True, status="running")
    train_run(store, r.run_id, progress=False)
    run = store.get_run(r.run_id)
    assert run.status == "completed" and P.accuracy(store.predictions(run.id)) == run.best_val_acc
    assert run.summary["predictions"]["epoch"] == run.best_epoch_number


def test_a_run_against_itself_fixed_and_broke_nothing_and_two_runs_add_up(store, animals, capsys):
    a = train(store, data=animals, strategy="feature_extraction", epochs=2).run_id
    b = train(store, data=animals, strategy="full", epochs=2).run_id
    classes = store.get_run(a).summary["classes"]
    pa, pb = store.predictions(a), store.predictions(b)
    same = P.diff(pa, pa, classes)
    assert (same.fixed, same.broken, same.net, same.unmatched) == ([], [], 0, 0)
    assert len(same.still_wrong) == len(P.errors(pa)) and same.both_right == sum(p.correct for p in pa)
    assert all(v == 0 for row in same.confusion_delta for v in row)
    d = P.diff(pa, pb, classes)
    wrong_a, wrong_b = {p.path for p in pa if not p.correct}, {p.path for p in pb if not p.correct}
    assert {p.path for p in d.fixed} == wrong_a - wrong_b and {p.path for p in d.broken} == wrong_b - wrong_a
    assert {p.path for p in d.still_wrong} == wrong_a & wrong_b
    assert len(d.fixed) + len(d.broken) + len(d.still_wrong) + d.both_right == d.shared == 60
    assert d.net == sum(p.correct for p in pb) - sum(p.correct for p in pa)
    n = len(classes)
    delta = (P.confusion(pb, n) - P.confusion(pa, n)).tolist()
    assert d.confusion_delta == delta and sum(map(sum, delta)) == 0
    for c in d.class_deltas:
        i = classes.index(c["class"])
        assert c["delta"] == pytest.approx((delta[i][i]) / c["images"])
    # The command says the same.
    assert main(["errors", str(b), "--against", str(a), "--limit", "3", "--json", "--db", store.url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["wrong"] == len(wrong_b) and [e["loss"] for e in out["errors"]] == [p.loss for p in P.errors(pb)[:3]]
    assert [e["path"] for e in out["against"]["fixed"]] == [p.path for p in d.fixed]
    assert [e["path"] for e in out["against"]["broken"]] == [p.path for p in d.broken]
    assert out["against"]["confusion_delta"] == delta


def _pred(i: int, path: str, label: int, pred: int) -> Prediction:
    return Prediction(
        i,
        path,
        label,
        pred,
        0.9 if label == pred else 0.6,
        0.9 if label == pred else 0.2,
        0.1 if label == pred else 1.6,
    )


def test_a_diff_matches_images_by_path_and_refuses_runs_that_cannot_be_compared():
    ref = [_pred(0, "a", 0, 0), _pred(1, "b", 1, 0), _pred(2, "c", 1, 1)]
    other = [_pred(0, "b", 1, 1), _pred(1, "a", 0, 1), _pred(2, "z", 0, 0)]  # another order, one image not shared
    d = P.diff(ref, other, ["x", "y"])
    assert [p.path for p in d.fixed] == ["b"] and [p.path for p in d.broken] == ["a"]
    assert (d.shared, d.unmatched, d.both_right) == (2, 2, 0)
    with pytest.raises(UserError, match="different classes"):
        P.diff(ref, other, ["x", "y"], ["x", "w"])
    with pytest.raises(UserError, match="share no validation image"):
        P.diff(ref, [_pred(0, "q", 0, 0)], ["x", "y"])
    with pytest.raises(UserError, match="no stored predictions"):
        P.diff(ref, [], ["x", "y"])


def test_deleting_a_run_deletes_its_predictions(tiny_run):
    store, run_id = tiny_run  # feature_extraction on tiny, 1 epoch
    assert store.predictions(run_id)
    store.delete_run(run_id)
    assert store.predictions(run_id) == []
