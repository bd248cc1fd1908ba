"""A run's typed summary (tl_core/store/summary.py): rows stored before it was typed read back by
attribute, unchanged; what earlier or other releases left (unknown, missing, unfit keys) reads
without an error; writes are validated; and the dict view the training loop still uses works."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy import update

from tl_core.store import ClassMetric, RunSummary, Store
from tl_core.store import summary as summary_module
from tl_core.store.summary import ExportRecord
from tl_core.store.tables import SqlRun

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "summaries_before_typed.json").read_text())["runs"]


def stored_as_found(store: Store, summary: dict) -> int:
    """A run whose summary column holds `summary` exactly, as an earlier release wrote it (no validation)."""
    run = store.create_run({"strategy": "full", "epochs": 3}, status="running")
    with store.engine.begin() as c:
        c.execute(update(SqlRun).where(SqlRun.id == run.id).values(summary=summary))
    return run.id


def _extras(value, where: str = "summary") -> list[str]:
    """Every key, at any depth, that the model kept as an extra instead of a typed field."""
    if isinstance(value, BaseModel):
        found = [f"{where}.{k}" for k in value.__pydantic_extra__ or {}]
        return found + [e for k in type(value).model_fields for e in _extras(getattr(value, k), f"{where}.{k}")]
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in _extras(v, f"{where}[{i}]")]
    return []


@pytest.mark.parametrize("name", sorted(FIXTURE))
def test_a_summary_stored_before_it_was_typed_reads_back_unchanged_with_every_key_typed(store, name):
    stored = FIXTURE[name]
    run = store.get_run(stored_as_found(store, stored))
    assert isinstance(run.summary, RunSummary)
    assert run.summary.to_dict() == stored and run.to_dict()["summary"] == stored  # show --json: the same JSON
    assert set(stored) <= set(RunSummary.model_fields)
    assert _extras(run.summary) == []  # nested too: every key the code wrote is a typed field
    # Written back as it was read (update_run validates it): the row is unchanged.
    store.update_run(run.id, summary=run.summary)
    assert store.get_run(run.id).summary.to_dict() == stored


def test_the_stored_summaries_read_by_attribute(store):
    s = {name: store.get_run(stored_as_found(store, stored)).summary for name, stored in FIXTURE.items()}
    full = s["progressive_test_resumed_exported"]
    raw = FIXTURE["progressive_test_resumed_exported"]
    assert full.classes == raw["classes"] and full.train_images == raw["train_images"] == 50
    assert full.test.acc == raw["test"]["acc"] and full.test.epoch == raw["test"]["epoch"]
    assert full.test_last.macro_f1 == raw["test_last"]["macro_f1"]
    assert full.test.classes[0] == ClassMetric(**raw["test"]["classes"][0])
    assert sum(c.support for c in full.test.classes) == full.test.images
    assert full.class_weights.weights == raw["class_weights"]["weights"]
    assert full.resumed_from.epoch == 1 and full.resumed_from.batch == raw["resumed_from"]["batch"]
    assert [e.format for e in full.exports] == ["torchscript"] and full.exports[0].passed
    assert [p.trainable_groups for p in full.phases] == [1, 2, 3]
    assert full.feature_cache.phases == raw["feature_cache"]["phases"] and full.feature_cache.used  # typed dicts
    assert full.precision_at(3) == raw["val_precision"][-1]["precision"] and full.precision_at(None) is None
    assert full.preprocessing.pre.crop_pct == 0.875 and full.preprocessing.in_channels == 3  # its default: unset
    assert full.predictions.epoch >= 1 and full.split.val_fingerprint == raw["split"]["val_fingerprint"]
    memory = s["l2sp_memory"].memory
    assert (memory.accumulate, memory.checkpointing) == (2, "on") and memory.activations_mb.with_checkpointing > 0
    assert s["l2sp_memory"].regularizer.name == "l2sp" and s["l2sp_memory"].feature_cache.why.startswith("off")
    assert s["ewc"].fisher.images == 16
    assert s["dann_target"].target.labelled and s["dann_target"].target.decode_cache.used
    gpu = s["feature_extraction_gpu"]
    assert gpu.gpu_memory.peak_mb == 288.4 and gpu.gpu_memory.predicted_mb == pytest.approx(310.56 + 24.5, abs=0.1)
    assert gpu.cudnn_benchmark.startswith("off (auto")
    messy = s["scratch_unreadable"]
    assert messy.forgetting.skipped and messy.forgetting.agreement is None
    assert [f.reason for f in messy.skipped.files] == ["not an image file"] and messy.unreadable[0].endswith(".png")
    assert messy.test is None and messy.exports == [] and "exports" not in messy.to_dict()  # absent: defaults


def test_unknown_missing_and_unfit_keys_still_read(store, capsys):
    summary_module._said_unfit.clear()
    stored = {
        "classes": ["cat", "dog"],
        "someday": {"a": [1, 2]},
        "gpu_memory": "n/a",
        "test": {"acc": 0.5},
        "memory": {"accumulate": 2, "effective_batch": 16, "checkpointing": "off", "new_lever": True},
        "last": {"train_loss": math.nan},
    }
    run = store.get_run(stored_as_found(store, stored))
    store.list_runs()  # read again: not said again
    s = run.summary
    assert s.classes == ["cat", "dog"] and s.warnings == [] and s.batch_size is None  # missing: defaults
    assert s.gpu_memory is None and s.test is None and run.test_acc is None  # unfit: left out
    said = [line for line in capsys.readouterr().err.splitlines() if "summary" in line]
    assert len(said) == 1 and "gpu_memory, test" in said[0]
    assert s.memory.accumulate == 2 and s.memory.model_extra == {"new_lever": True}  # unknown: kept
    back = s.to_dict()
    assert back["someday"] == {"a": [1, 2]} and back["memory"]["new_lever"] is True
    assert math.isnan(back["last"]["train_loss"]) and "gpu_memory" not in back and "test" not in back


def test_writes_are_validated_and_update_summary_keeps_the_other_fields(store):
    run = store.create_run({"strategy": "full"}, status="running")
    with pytest.raises(ValidationError, match="train_images"):
        store.update_run(run.id, summary={"train_images": "many"})
    with pytest.raises(ValidationError, match="test"):
        store.finish_run(run.id, "completed", summary={"test": {"acc": 0.5}})  # a test block without its scores
    store.update_run(run.id, summary=RunSummary(classes=["a", "b"], train_images=10))
    record = ExportRecord(
        format="onnx",
        path="/x.onnx",
        bytes=10,
        images=4,
        top1_agreement=1.0,
        max_prob_diff=0.0,
        tolerance=1e-4,
        passed=True,
        run=run.id,
    )
    now = store.update_summary(run.id, exports=[record], total_seconds=1.5)
    assert now == store.get_run(run.id).summary
    assert now.to_dict() == {
        "classes": ["a", "b"],
        "train_images": 10,
        "exports": [record.to_dict()],
        "total_seconds": 1.5,
    }
    with pytest.raises(ValidationError):
        store.update_summary(run.id, exports=[{"format": "onnx"}])  # no path
    assert store.get_run(run.id).summary.exports == [record]  # unchanged by the refused write


def test_training_reads_and_writes_the_summary_as_a_dict_meanwhile(store):
    # What tl_core/training does today: {**summary, ...}, summary["block"], .get, "key" in, summary[k] = v.
    run = store.get_run(stored_as_found(store, FIXTURE["l2sp_memory"]))
    summary = run.summary
    assert summary["memory"] == FIXTURE["l2sp_memory"]["memory"] and isinstance(summary["memory"], dict)
    assert summary.get("val_precision", [])[0]["from_epoch"] == 1
    assert summary.get("test") is None and "test" not in summary and "memory" in summary
    assert summary.get("gpu_memory", {}) == {} and "warnings" in summary
    kept = {k: v for k, v in summary.items() if k in ("predictions", "exports", "val_precision")}
    assert kept == {k: FIXTURE["l2sp_memory"][k] for k in ("predictions", "val_precision")}
    summary["phases"] = [{"first_epoch": 1, "trainable_groups": 9, "last_epoch": 2}]
    assert summary.phases[0].trainable_groups == 9  # validated into its type
    with pytest.raises(ValidationError):
        summary["phases"] = [{"first_epoch": "one"}]
    store.finish_run(
        run.id,
        "completed",
        summary={**summary, "total_seconds": 2.5, "memory": {**summary["memory"], "activations_mb": None}},
    )
    back = store.get_run(run.id).summary
    assert back.total_seconds == 2.5 and back.phases[0].last_epoch == 2 and back.memory.activations_mb is None
    assert back.regularizer.name == "l2sp"  # the rest as it was
    with pytest.raises(KeyError):
        summary["resumed_from"]
