"""What a run trains on: its data (`RunData`, `load_data`), its model (`load_model`), the cache of
its frozen groups' output (`frozen_features`) and the loss it minimises (`training_loss`).

The same pieces serve a run (run.py), the LR finder and the data probe, so that what they measure
is what a run would train on: the split by its own seed, images decoded once (decode_cache.py) in
the layout convolutions run fastest in (`CHANNELS_LAST`), and the weights' own preprocessing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import RunConfig
from ..data import decode_cache, folders, scan_cache, shared_memory, transforms
from ..data.splits import Splits, batch_size_for, class_weights, split_dataset
from ..models import adapters, backbones, channels
from . import feature_cache
from .strategies import get_strategy


@dataclass
class RunData:
    """What a run trains and validates on, and what it said about it."""

    index: folders.DatasetIndex
    splits: Splits
    rows: decode_cache.DatasetRows
    pipeline: decode_cache.Pipeline
    batch_size: int
    batch_note: str | None
    workers: int  # DataLoader workers, as fitted to /dev/shm (loader)
    train: transforms.EpochLoader | decode_cache.PixelLoader  # batches of (images, labels) on the device
    val: DataLoader | decode_cache.PixelLoader
    decode_note: dict
    loader: shared_memory.LoaderPlan  # the workers and prefetch, fitted to /dev/shm's free space

    @property
    def classes(self) -> list[str]:
        return self.splits.classes


CHANNELS_LAST = True  # NHWC: the layout convolutions run fastest in, on GPUs and CPUs (oneDNN) alike


def load_data(cfg: RunConfig, device: torch.device) -> RunData:
    """The split (by its own seed: an experiment's runs share it whatever their --seed), the batch
    size, and loaders over images decoded once, normalised on the device with the weights' own
    preprocessing (channels the weights have none for: measured on the training images)."""
    index = scan_cache.scan_dataset(cfg.data, cfg.in_channels)  # folders.scan_dataset, reused while no file changed
    splits = split_dataset(index, cfg.val_fraction, cfg.train_fraction, cfg.split_seed, cfg.test_fraction, cfg.exclude)
    batch_size, batch_note = batch_size_for(cfg.batch_size, len(splits.train))
    pre, stats = channels.normalisation(
        backbones.preprocessing(cfg.backbone), cfg.in_channels, cfg.weights_to_load, [it.path for it in splits.train]
    )
    pipeline = decode_cache.Pipeline(pre, cfg.image_size, cfg.augment, cfg.in_channels, stats)
    rows = decode_cache.DatasetRows.of(index)
    workers = cfg.workers if cfg.workers is not None else default_workers(device)
    # Workers hand batches over through /dev/shm: as many as its free space holds (shared_memory.py).
    cached = decode_cache.cache_refusal(rows, pipeline, cfg.decode_cache == "on") is None
    loader = shared_memory.fit(workers, batch_size * decode_cache.item_bytes(pipeline, cached))
    train, val, note = decode_cache.make_loaders(
        splits,
        rows,
        pipeline,
        batch_size,
        cfg.seed,
        loader.workers,
        device,
        channels_last=CHANNELS_LAST,
        enabled=cfg.decode_cache == "on",
        prefetch_factor=loader.prefetch_factor,
    )
    return RunData(index, splits, rows, pipeline, batch_size, batch_note, loader.workers, train, val, note, loader)


def load_model(cfg: RunConfig, num_classes: int, device: torch.device) -> backbones.Backbone:
    """The pretrained body (or random, for scratch) and a new head, on the device; with LoRA's
    adapters beside its layers where the strategy trains adapters (adapters.py)."""
    bb = backbones.create_backbone(
        cfg.backbone,
        num_classes,
        weights=cfg.weights_to_load,
        head=cfg.head,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        in_channels=cfg.in_channels,
        image_size=cfg.image_size,
    )
    if get_strategy(cfg.strategy).trains == "adapters":  # after the weights load: B = 0 keeps them exact
        adapters.add_lora(bb, cfg.lora_rank, cfg.lora_alpha, cfg.image_size, cfg.in_channels)
    layout = torch.channels_last if CHANNELS_LAST else torch.preserve_format
    # Module.to takes memory_format beside a device; torch's stubs have no such overload.
    bb.model = bb.model.to(device, memory_format=layout)  # type: ignore[call-overload]
    return bb


def frozen_features(
    cfg: RunConfig,
    bb: backbones.Backbone,
    d: RunData,
    device: torch.device,
    amp: torch.dtype | None,
    check: Callable[[], None] | None = None,
) -> feature_cache.FrozenFeatures:
    """The run's cache of frozen groups' output (feature_cache.py), as its settings ask for it."""
    return feature_cache.FrozenFeatures(
        bb,
        d.splits,
        d.rows,
        d.pipeline,
        views=cfg.feature_views,
        batch_size=d.batch_size,
        seed=cfg.seed,
        device=device,
        workers=d.workers,
        channels_last=CHANNELS_LAST,
        check=check,
        enabled=_feature_cache_enabled(cfg),
        precision=feature_cache.extraction_dtype(cfg.feature_precision, device, amp),
    )


def _feature_cache_enabled(cfg: RunConfig) -> bool | str:
    if cfg.feature_cache != "on":
        return False
    if cfg.adapt != "none":
        return (
            "off: --adapt runs target-domain images through the whole model at every step, "
            "so there are no frozen features to reuse"
        )
    trains = get_strategy(cfg.strategy).trains
    if trains != "all":
        return (
            f"off: --strategy {cfg.strategy} trains {trains} throughout the body, so "
            f"no group's output stays fixed to cache"
        )
    return True


def training_loss(cfg: RunConfig, d: RunData, device: torch.device) -> tuple[nn.Module, dict | None]:
    """The cross-entropy training minimises, and what the run records of its class weights (None
    without --class-weights). Weighted (splits.class_weights, from the training split alone) it is
    the training objective only: val and test are scored with the plain one, comparable across runs."""
    if cfg.class_weights == "none":
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), None
    weights = class_weights(d.splits.train, d.classes)
    loss = nn.CrossEntropyLoss(weight=torch.tensor(weights, device=device), label_smoothing=cfg.label_smoothing)
    return loss, {"mode": cfg.class_weights, "weights": dict(zip(d.classes, weights))}


def default_workers(device: torch.device) -> int:
    """DataLoader workers where --workers is not given."""
    cpus = os.cpu_count() or 1
    # On a small CPU box the model's threads need the cores more than decoding does.
    return min(8, cpus - 1) if device.type == "cuda" else min(4, max(0, cpus - 2))
