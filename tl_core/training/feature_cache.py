"""Frozen features computed once: train the layers above the freeze boundary on cached activations.

When a backbone's bottom layer groups are frozen (eval mode, no gradient), their output for an
image is the same in every epoch. So, for each freeze boundary a strategy sets (fastai's
freeze_to(n): groups 0..n-1 frozen, finetuning.py):
  1. cut the model there into `frozen` (images -> activations) and `rest` (activations ->
     logits): cuts.py;
  2. compute `frozen` once per image into an on-disk cache (data/scan_cache.py) keyed by backbone,
     weights, boundary, dataset content and transform; with augmentation, K views per image;
  3. train `rest` on batches of cached activations, sampling one view per image each epoch.
It is used for a phase when the cache already holds the rows, or when filling it costs no more
frozen forward passes than the phase's ordinary epochs would; the run records what was used
and, where not, why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..data import folders, shared_memory
from ..data.decode_cache import Check, DatasetRows, DecodedImages, Pipeline, PixelDataset, item_bytes, read_through
from ..data.scan_cache import ArrayCache, CacheTooLarge
from ..data.splits import Splits
from ..logs import logger
from ..models import weights
from ..models.backbones import Backbone
from ..models.cuts import Cut, NoCut, cut_at, modes_kept

log = logger(__name__)

FEATURES_VERSION = 1


# --- precision and keys ---------------------------------------------------------------------


def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere it is emulated."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def extraction_dtype(setting: str, device: torch.device, amp: torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype frozen activations are computed in (None: fp32).

    auto: the run's own autocast on a GPU; bf16 on a CPU that computes it natively (AVX512-BF16
    or AMX: about 2.5x faster there than fp32), fp32 on other CPUs, where bf16 is emulated. So the
    same settings give validation numbers in bf16 on one CPU and in fp32 on another: they agree to
    bf16's precision (about 3 significant digits of a probability), and each run says which it
    had (`val_precision`).
    """
    if setting == "fp32":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return amp
    return torch.bfloat16 if cpu_computes_bf16() else None


def precision_name(dtype: torch.dtype | None) -> str:
    """ "fp32", "bf16" or "fp16" for an autocast dtype (None: fp32)."""
    return (
        "fp32"
        if dtype is None
        else str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace("float16", "fp16")
    )


def val_precision(epoch: int, amp: torch.dtype | None, cached: FeatureRun | None, features: torch.dtype | None) -> dict:
    """Which precision produced a phase's validation numbers, from `epoch` (0-based) on: the lowest
    of the run's autocast and, where the phase reads cached frozen features, theirs."""
    where = []
    if amp is not None:
        where.append(f"{precision_name(amp)} autocast")
    if cached is not None and features is not None:
        where.append(f"frozen layers' output cached in {precision_name(features)}")
    lowest = amp if amp is not None else (features if cached is not None else None)
    return {"from_epoch": epoch + 1, "precision": precision_name(lowest), "how": "; ".join(where) or "fp32 throughout"}


# --- batches of cached activations ----------------------------------------------------------------


class FeatureBatches:
    """(activations, labels) batches from a cache entry; shuffled per epoch, one view per image."""

    def __init__(
        self,
        entry: ArrayCache,
        rows: np.ndarray,
        labels: list[int],
        views: int,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        pin: bool = False,
    ):
        self.entry, self.rows, self.labels = entry, rows, torch.tensor(labels, dtype=torch.long)
        self.views, self.batch_size, self.shuffle, self.seed = views, batch_size, shuffle, seed
        self.drop_last, self.pin, self.epoch = drop_last, pin, 0
        self._data: np.memmap | None = None

    def for_epoch(self, epoch: int) -> FeatureBatches:
        self.epoch = epoch
        return self

    def __len__(self) -> int:
        n = len(self.rows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        if self._data is None:
            self._data = self.entry.data()
        n = len(self.rows)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g).numpy()
            view = torch.randint(self.views, (n,), generator=g).numpy()
        else:
            order, view = np.arange(n), np.zeros(n, dtype=np.int64)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = torch.from_numpy(self._data[self.rows[idx] * self.views + view[idx]])
            yield (x.pin_memory() if self.pin else x), self.labels[idx]


# --- the per-boundary decision -------------------------------------------------------------------


@dataclass
class FeatureRun:
    """Cached activations for one freeze boundary: what `rest` trains and validates on."""

    cut: Cut
    train: FeatureBatches
    val: FeatureBatches


class FrozenFeatures:
    """For each freeze boundary of a run: the cached activations to train on, or why not."""

    EXTRACT_BATCH = {"cuda": 256, "cpu": 64}  # inference only: bigger batches than training's are faster

    def __init__(
        self,
        bb: Backbone,
        splits: Splits,
        rows: DatasetRows,
        pipeline: Pipeline,
        *,
        views: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        precision: torch.dtype | None = None,
        workers: int = 0,
        channels_last: bool = False,
        enabled: bool | str = True,
        check: Check | None = None,
    ):
        """enabled: True, or False / the reason it is off (said in the run's summary)."""
        self.bb, self.splits, self.rows, self.pipeline = bb, splits, rows, pipeline
        self.views = views if pipeline.augment != "none" else 1
        self.batch_size, self.seed, self.device, self.precision = batch_size, seed, device, precision
        self.channels_last = channels_last
        self.workers, self.enabled, self.check = workers, enabled, check
        self.train_rows, self.val_rows = rows.rows(splits.train), rows.rows(splits.val)
        self.records: list[dict] = []
        self._weights: dict | None = None
        self._lowest = len(bb.groups)  # the lowest boundary so far: groups from here up may have trained

    def at(self, boundary: int, epoch: int, phase_epochs: int) -> FeatureRun | None:
        """Cached activations for this boundary (computing what is missing), or None; recorded either way."""
        record = {
            "epoch": epoch,
            "frozen_groups": boundary,
            "views": self.views,
            "precision": precision_name(self.precision),
        }
        self.records.append(record)
        try:
            # The key names the pretrained weights: right only while the groups below the boundary
            # never trained. Strategies only ever unfreeze; a boundary moving back up is refused.
            if boundary > self._lowest:
                raise NoCut("groups below the boundary trained earlier in this run")
            self._lowest = min(self._lowest, boundary)
            run = self._prepare(boundary, phase_epochs, record)
        except (NoCut, CacheTooLarge) as e:
            record.update(used=False, why=str(e))
            return None
        record["used"] = run is not None
        return run

    def summary(self) -> dict:
        """What the run records: summary["feature_cache"]."""
        used = [r for r in self.records if r.get("used")]
        first = used[0] if used else (self.records[0] if self.records else {})
        out = {
            "used": bool(used),
            "boundary": first.get("boundary"),
            "views": self.views,
            "hit": bool(used) and all(r.get("hit") for r in used),
            "precision": precision_name(self.precision),
            "seconds": round(sum(r.get("seconds", 0.0) for r in used), 3),
        }
        if not used and first.get("why"):
            out["why"] = first["why"]
        if len(self.records) > 1:
            out["phases"] = self.records
        return out

    def describe(self) -> str:
        """One line for the run's log."""
        r = self.records[-1]
        if not r.get("used"):
            return f"feature cache: not used ({r.get('why', '')})"
        how = "found in the cache" if r["hit"] else f"computed in {r['seconds']:.1f} s"
        views = (
            f"; augmentation {self.pipeline.augment}: {self.views} cached views per image, one sampled per epoch"
            if self.pipeline.augment != "none"
            else ""
        )
        return f"feature cache: {r['boundary']} of {self.bb.spec.name} {how}{views}"

    # the work
    def _entry(self, cut: Cut, augmented: bool) -> ArrayCache:
        if self._weights is None:
            self._weights = weights.identity(self.bb.spec, self.bb.weights, self.seed)
        key = {
            "backbone": self.bb.spec.name,
            "weights": self._weights,
            "boundary": cut.boundary,
            "cut": cut.name,
            "dataset": self.rows.fingerprint,
            # The val view never augments: runs with and without augmentation (and probes) share it.
            "transform": {
                **self.pipeline.describe(),
                **({} if augmented else {"augment": "none"}),
                "view": "augmented" if augmented else "val",
                "views": self.views if augmented else 1,
            },
            "compute": {
                "device": self.device.type,
                "precision": precision_name(self.precision),
                "torch": torch.__version__,
            },
            "version": FEATURES_VERSION,
        }
        n = len(self.rows.paths) * (self.views if augmented else 1)
        return ArrayCache("features", key, n, cut.shape, np.float32)

    def _prepare(self, boundary: int, phase_epochs: int, record: dict) -> FeatureRun | None:
        if self.enabled is not True:
            raise NoCut(self.enabled or "off (--feature-cache off)")
        cut = cut_at(self.bb, boundary, self.pipeline.image_size, self.device)
        record["boundary"] = cut.name
        augmented = self.pipeline.augment != "none"
        val = self._entry(cut, augmented=False)
        train = self._entry(cut, augmented=True) if augmented else val
        train_want = _view_rows(self.train_rows, self.views) if augmented else self.train_rows
        val_want = self.val_rows if augmented else np.concatenate([self.train_rows, self.val_rows])
        missing = len(val.missing(val_want)) + (len(train.missing(train_want)) if augmented else 0)
        ordinary = phase_epochs * (len(self.train_rows) + len(self.val_rows))
        record["hit"] = missing == 0
        if missing > ordinary:
            raise NoCut(
                f"a {phase_epochs}-epoch phase: caching costs {missing} frozen forward passes, "
                f"ordinary epochs {ordinary}"
            )
        for entry in {id(e): e for e in (train, val)}.values():
            entry.check_fits()
        start = time.perf_counter()
        self._fill(val, cut, val_want, augmented=False)
        if augmented:
            self._fill(train, cut, train_want, augmented=True)
        # The time spent computing activations: none on a hit (reading the cache's index is not it).
        record["seconds"] = round(time.perf_counter() - start, 3) if missing else 0.0
        # Unreadable images (listed when decoded) have no activations: leave them out.
        k = self.views if augmented else 1
        bad = set((train.failed() // k).tolist()) | set(val.failed().tolist())
        train_rows, train_labels = _readable(self.train_rows, self.splits.train, bad)
        val_rows, val_labels = _readable(self.val_rows, self.splits.val, bad)
        drop_last = len(train_rows) > self.batch_size and len(train_rows) % self.batch_size == 1
        pin = self.device.type == "cuda"
        return FeatureRun(
            cut,
            FeatureBatches(
                train,
                train_rows,
                train_labels,
                k,
                self.batch_size,
                shuffle=True,
                seed=self.seed,
                drop_last=drop_last,
                pin=pin,
            ),
            FeatureBatches(val, val_rows, val_labels, 1, self.batch_size, pin=pin),
        )

    def _fill(self, entry: ArrayCache, cut: Cut, want: np.ndarray, augmented: bool) -> None:
        if not len(entry.missing(want)):
            return
        images = DecodedImages(self.rows, self.pipeline.stage(train=augmented))
        with entry.filling():
            todo = entry.missing(want)  # another run may have filled them while we waited
            image_rows = todo // self.views if augmented else todo
            pixels = PixelDataset(
                images,
                image_rows,
                list(todo),  # the "label" is the entry row
                self.pipeline.train_transform() if augmented else None,
                seeds=todo if augmented else None,
            )
            self._extract(entry, cut, pixels, todo)

    @torch.inference_mode()
    def _extract(self, entry: ArrayCache, cut: Cut, pixels: PixelDataset, todo: np.ndarray) -> None:
        """Run `frozen` over the images of entry rows `todo` (`pixels` yields them, labelled by row)."""
        big = self.EXTRACT_BATCH.get(self.device.type, 64)
        # Its batches are bigger than training's: its workers fitted to /dev/shm's free space again (shared_memory.py).
        loader = shared_memory.fit(self.workers, big * item_bytes(self.pipeline, cached=True))
        if loader.lowered:
            log.warning(f"feature cache: {loader.note()}")
        # Its own generator: extracting must not draw from the run's random stream.
        batches = read_through(
            pixels,
            batch_size=big,
            generator=torch.Generator(),
            pin_memory=self.device.type == "cuda",
            **loader.loader_args(),
        )
        written: list[np.ndarray] = []
        finished = False
        with modes_kept(self.bb.model):
            self.bb.model.eval()
            try:
                for x, entry_rows in batches:
                    if len(entry_rows):
                        x = self.pipeline.to_model(x, self.device, self.channels_last)
                        with torch.autocast(self.device.type, dtype=self.precision, enabled=self.precision is not None):
                            acts = cut.frozen(x)
                        entry.write(entry_rows.numpy(), acts.float().cpu().numpy())
                        written.append(entry_rows.numpy())
                    if self.check is not None:
                        self.check()
                finished = True
            finally:  # keep what was computed, even when stopped
                done = np.concatenate(written) if written else np.zeros(0, dtype=np.int64)
                # Rows the loader dropped were unreadable images: failed, not to be tried again.
                failed = np.setdiff1d(todo, done) if finished else None
                if len(done) or (failed is not None and len(failed)):
                    entry.commit(done, failed)


def _view_rows(image_rows: np.ndarray, views: int) -> np.ndarray:
    return (image_rows[:, None] * views + np.arange(views)[None, :]).reshape(-1)


def _readable(rows: np.ndarray, items: list[folders.Item], bad: set[int]) -> tuple[np.ndarray, list[int]]:
    keep = [i for i, r in enumerate(rows.tolist()) if r not in bad]
    return rows[keep], [items[i].label for i in keep]
