"""Resume: a stopped run continues from its last checkpoint as if it had never stopped (on SQLite
and on PostgreSQL: `db_store`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tl_core.training import run as T

from .helpers import stop_before_epoch, stop_in_epoch, train


@pytest.mark.parametrize("strategy", ["progressive", "two_phase"])
def test_a_resumed_run_matches_an_uninterrupted_one(strategy, tiny, db_store, monkeypatch):
    store = db_store
    # Param groups change at epochs 1, 2, 3 (progressive) or 2 (two_phase): the resume must
    # rebuild the optimizer with the groups unfrozen so far and its state, LR phase and RNG.
    settings = dict(
        data=tiny,
        strategy=strategy,
        epochs=4,
        head_epochs=2,
        augment="light",
        seed=5,
        schedule="onecycle",
        unfreeze_every=1,
    )
    whole = train(store, **settings)
    with monkeypatch.context() as m:
        stop_before_epoch(m, 2)
        stopped = train(store, **settings)
    assert stopped.status == "cancelled" and stopped.epochs == 2
    store.requeue(stopped.run_id, status="running")
    resumed = T.train_run(store, stopped.run_id, progress=False)
    assert resumed.status == "completed" and resumed.epochs == 4
    a, b = (store.epoch_metrics([r.run_id])[r.run_id] for r in (whole, resumed))
    assert sorted(a) == sorted(b) == [0, 1, 2, 3]
    for epoch in range(4):
        for key in a[epoch]:
            if key.startswith(("lr/", "train_", "val_", "trainable_")):
                assert b[epoch][key] == pytest.approx(a[epoch][key], rel=1e-5, abs=1e-7), (epoch, key)
    assert resumed.best_val_acc == whole.best_val_acc
    assert [c.confusion for c in store.class_metrics(resumed.run_id)] == [
        c.confusion for c in store.class_metrics(whole.run_id)
    ]


def _same_epochs(store, whole, resumed, epochs: int) -> None:
    a, b = (store.epoch_metrics([r.run_id])[r.run_id] for r in (whole, resumed))
    assert sorted(a) == sorted(b) == list(range(epochs))
    for epoch in range(epochs):
        for key in a[epoch]:
            if key.startswith(("lr/", "train_", "val_", "trainable_")):
                assert b[epoch][key] == pytest.approx(a[epoch][key], rel=1e-5, abs=1e-7), (epoch, key)


@pytest.mark.parametrize(
    "strategy, settings, epoch, batch",
    [
        # On the images, augmented (the stop before a batch is drawn: its augmentation's random draws
        # are the saved streams'), accumulating 2 batches per step, in its second epoch.
        ("progressive", dict(augment="light", accumulate=2, unfreeze_every=1, head_epochs=1), 1, 1),
        # On the frozen body's cached features, in its first epoch (no epoch recorded yet).
        ("feature_extraction", dict(), 0, 1),
    ],
)
def test_a_run_stopped_in_the_middle_of_an_epoch_goes_on_from_that_batch(
    strategy, settings, epoch, batch, tiny, store, monkeypatch
):
    settings = dict(data=tiny, strategy=strategy, epochs=3, seed=7, schedule="onecycle", **settings)
    whole = train(store, **settings)
    with monkeypatch.context() as m:
        stop_in_epoch(m, epoch, batch)
        stopped = train(store, **settings)
    # The worker's stop: back in the queue (TL_RESUME_ON_RESTART), with the epoch's place saved.
    run = store.get_run(stopped.run_id)
    assert (run.status, run.resume, run.epochs_done) == ("queued", True, epoch)
    partial = T.torch.load(Path(run.run_dir) / "last.pt", weights_only=True)["partial"]
    assert partial["batches"] > 0 and partial["seen"] > 0
    resumed = T.train_run(store, stopped.run_id, progress=False)
    assert resumed.status == "completed", resumed.error
    assert store.get_run(resumed.run_id).summary["resumed_from"]["batch"] == partial["batches"]
    _same_epochs(store, whole, resumed, 3)
    assert resumed.best_val_acc == whole.best_val_acc


def test_an_epoch_row_lost_with_the_process_is_written_again_from_the_checkpoint(tiny, db_store, monkeypatch):
    store = db_store
    # Epoch rows are written in the background (store.EpochWriter): a process killed right after
    # its checkpoint may not have written the last row. The checkpoint holds it; resume writes it.
    settings = dict(data=tiny, epochs=3, seed=2)
    whole = train(store, **settings)

    class LosesEpoch1(T.EpochWriter):
        def log_epoch(self, run_id, epoch, metrics, best=None):
            if epoch != 1:
                super().log_epoch(run_id, epoch, metrics, best)

    with monkeypatch.context() as m:
        m.setattr(T, "EpochWriter", LosesEpoch1)
        stop_before_epoch(m, 2)
        stopped = train(store, **settings)
    assert sorted(store.epoch_metrics([stopped.run_id])[stopped.run_id]) == [0]
    store.requeue(stopped.run_id, status="running")
    resumed = T.train_run(store, stopped.run_id, progress=False)
    a, b = (store.epoch_metrics([r.run_id])[r.run_id] for r in (whole, resumed))
    assert sorted(b) == [0, 1, 2] and resumed.epochs == 3
    assert [b[e]["val_acc"] for e in b] == pytest.approx([a[e]["val_acc"] for e in a])


def test_resume_refuses_a_dataset_whose_classes_changed(tiny, db_store, monkeypatch, tmp_path):
    store = db_store
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    with monkeypatch.context() as m:
        stop_before_epoch(m, 1)
        stopped = train(store, data=str(data), epochs=3)
    shutil.copytree(data / "cat", data / "lynx")
    store.requeue(stopped.run_id, status="running")
    result = T.train_run(store, stopped.run_id, progress=False)
    assert result.status == "failed" and "classes changed" in result.error
