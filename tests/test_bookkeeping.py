"""Cheap bookkeeping: the Compare page's one-row-per-run read model, and a Runs page without metric rows."""

from __future__ import annotations

from sqlalchemy import delete, event, select

from tl_core.store.tables import SqlEpochMetric, SqlRunCurves
from ui import format as fmt


def _narrow(store, run_id: int) -> dict:
    out: dict = {}
    with store._session() as s:
        for epoch, key, value in s.execute(
            select(SqlEpochMetric.epoch, SqlEpochMetric.key, SqlEpochMetric.value).where(
                SqlEpochMetric.run_id == run_id
            )
        ):
            out.setdefault(epoch, {})[key] = value
    return out


def test_curves_hold_exactly_what_the_metric_rows_hold(store):
    run = store.create_run({"strategy": "progressive", "epochs": 3}, status="running").id
    store.log_epoch(run, 0, {"val_acc": 0.5, "lr/head": 1e-3, "trainable_groups": 1})
    store.log_epoch(run, 1, {"val_acc": 0.6, "lr/head": 9e-4, "lr/stage7": 3e-4, "trainable_groups": 2})
    store.log_epoch(run, 1, {"val_acc": 0.65, "lr/head": 9e-4, "lr/stage7": 3e-4, "trainable_groups": 2})  # resumed
    store.import_epochs(run, {2: {"val_acc": 0.7, "train_loss": 0.1}})
    got = store.epoch_metrics([run])[run]
    assert got == _narrow(store, run)
    assert got[0] == {"val_acc": 0.5, "lr/head": 1e-3, "trainable_groups": 1.0}  # no key it did not have
    assert got[1]["val_acc"] == 0.65 and sorted(got) == [0, 1, 2]
    assert store.get_run(run).epochs_done == 3


def test_runs_recorded_before_the_curves_table_are_read_from_their_rows(store):
    run = store.create_run({}, status="running").id
    store.log_epoch(run, 0, {"val_acc": 0.5})
    with store._session.begin() as s:
        s.execute(delete(SqlRunCurves))
    assert store.epoch_metrics([run]) == {run: {0: {"val_acc": 0.5}}}


def test_the_compare_page_reads_one_row_per_run_and_the_runs_page_none(store):
    ids = [store.create_run({"epochs": 50}, "e", status="completed").id for _ in range(3)]
    for run in ids:
        store.import_epochs(run, {e: {"val_acc": e / 50, "val_loss": 1 - e / 50} for e in range(50)})
    fetched = []
    event.listen(store.engine, "after_cursor_execute", lambda conn, cur, stmt, *a: fetched.append((stmt, cur.rowcount)))
    fmt.runs_rows(store.list_runs())
    assert not [q for q, _ in fetched if "epoch_metrics" in q or "run_curves" in q]
    fetched.clear()
    metrics = store.epoch_metrics(ids)
    assert [q for q, _ in fetched if "epoch_metrics" in q] == []  # every run had its curves row
    assert all(len(metrics[r]) == 50 for r in ids)
    store.delete_run(ids[0])
    assert store.epoch_metrics([ids[0]]) == {ids[0]: {}}
