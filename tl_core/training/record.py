"""What a run writes of itself as it trains, beside its epoch rows: its summary (`RunRecord`).

The summary is the run's record of everything not per epoch: its data and split, batch size,
preprocessing, warnings, what start-up cost, the GPU probe, the feature cache and the precision
of each phase's validation, the terms' set-up, the test pass, forgetting... `RunRecord` writes
it: `start` before the first epoch (whole: a new start forgets the previous attempt's), `note`
to add fields as they become known, `finish` with the run's end. The loop writes it nowhere else.

Each write adds to the summary as stored, not to a copy held since the start: other writers
add their own fields to it while the run trains (the store its best epoch's `predictions`, an
export its `exports`), and those stay.
"""

from __future__ import annotations

from ..analysis import predictions
from ..config import RunConfig
from ..data import folders
from ..data.splits import split_fingerprint
from ..logs import logger
from ..models.backbones import Backbone
from ..store.store import Run, Store
from .run_data import RunData

log = logger(__name__)

# What a resume keeps of the summary its earlier attempts wrote: its best epoch's predictions (and
# their exports), and the precision of its earlier phases' validation.
_KEPT_ON_RESUME = ("predictions", "exports", "val_precision")


class RunRecord:
    """The run's summary: written through the store, read back from here (`summary`)."""

    def __init__(self, store: Store, run: Run):
        self.store, self.run = store, run
        self.summary: dict = dict(run.summary)  # as last written

    def start(self, cfg: RunConfig, d: RunData, bb: Backbone) -> None:
        """The run's summary before its first epoch: data, batch, input, warnings, skipped files;
        and the same in its log. A start from scratch drops its earlier attempt's predictions."""
        warnings, skipped = cfg.warnings(), folders.skipped_summary(d.index)
        if note := d.loader.note():  # fewer DataLoader workers than asked: /dev/shm is small (shared_memory.py)
            warnings.append(note)
        kept = {k: v for k, v in self.run.summary.items() if k in _KEPT_ON_RESUME and self.run.resume}
        if not self.run.resume:
            self.store.delete_predictions(self.run.id)
        self.summary = {
            **kept,
            "classes": d.classes,
            "train_images": len(d.splits.train),
            "val_images": len(d.splits.val),
            "split": {"seed": cfg.split_seed, "val_fingerprint": split_fingerprint(d.splits)},
            **({"exclusions": d.splits.applied.to_dict()} if cfg.exclude else {}),
            "batch_size": {"used": d.batch_size, **({"why": d.batch_note} if d.batch_note else {})},
            "preprocessing": {**d.pipeline.describe(), "native_size": bb.preprocessing.native_size},
            "warnings": warnings,
            "skipped": skipped,
            "weights": bb.weights,
            "groups": [g.name for g in bb.groups],
            "decode_cache": d.decode_note,
            "loader": d.loader.summary(),
            "batchnorm": {"setting": cfg.bn, "mode": cfg.strategy_params().bn},
        }
        self.store.update_run(self.run.id, summary=self.summary)
        unlisted = skipped["count"] - len(skipped["files"])
        if d.batch_note:
            log.info(d.batch_note)
        if cfg.exclude:
            applied = d.splits.applied
            log.info(
                f"exclusions: {len(applied.excluded)} images left out, {len(applied.relabelled)} moved to another "
                f"class, before the split"
                + (
                    f"; {len(applied.not_found)} entries named no image found: {applied.not_found[:5]}"
                    if applied.not_found
                    else ""
                )
            )
        for line in [
            *(f"warning: {w}" for w in warnings),
            *(f"skipped {f['path']} ({f['reason']})" for f in skipped["files"]),
            *([f"skipped {unlisted} more files"] if unlisted else []),
        ]:
            log.warning(line)

    def note(self, **fields) -> None:
        """Add `fields` to the run's summary."""
        if not fields:
            return
        self.summary = {**self.store.get_run(self.run.id).summary, **fields}
        self.store.update_run(self.run.id, summary=self.summary)

    def finish(self, status: str, **fields) -> None:
        """The run's end (store.finish_run), its summary with `fields` added."""
        self.summary = {**self.store.get_run(self.run.id).summary, **fields}
        self.store.finish_run(self.run.id, status, summary=self.summary)

    def save_predictions(self, epoch: int, d: RunData, batches, outputs) -> None:
        """The best epoch's predictions on every validation image (evaluate's `outputs`, in the
        order `batches` gave them), replacing the previous best's."""
        if outputs is None:
            return
        rows = outputs.cpu().double().numpy()
        paths = _val_paths(batches, d, len(rows))
        if paths is None:
            log.info(f"predictions not stored: {len(rows)} validation images could not be matched to their files")
            return
        self.store.save_predictions(self.run.id, epoch, predictions.from_outputs(paths, *rows.T))


def _val_paths(batches, d: RunData, n: int) -> list[str] | None:
    """The validation images in the order `batches` gave `n` of them (unreadable ones left out),
    or None where that order cannot be known."""
    if n == len(d.splits.val):
        return [it.path for it in d.splits.val]
    rows = getattr(batches, "rows", None)  # feature batches: the readable rows
    dataset = getattr(batches, "dataset", None)
    if rows is None and dataset is not None and hasattr(dataset, "unreadable"):  # the decode cache's loader
        rows = [r for r in dataset.rows.tolist() if r not in dataset.unreadable]
    if rows is not None and len(rows) == n:
        return [d.rows.paths[r] for r in list(rows)]
    return None
