"""Two sources of variance, two seeds: --split-seed fixes the split, --seed varies the training."""

from __future__ import annotations

from tl_core import service
from tl_core.config import RunConfig
from tl_core.data import folders
from tl_core.data.splits import split_dataset

from .helpers import train


def test_the_split_follows_the_split_seed_only(tiny, store):
    runs = {
        (seed, split): train(store, data=tiny, epochs=1, seed=seed, split_seed=split)
        for seed, split in ((0, 0), (1, 0), (0, 1))
    }
    summary = {k: store.get_run(r.run_id).summary for k, r in runs.items()}
    epochs = {k: store.epoch_metrics([r.run_id])[r.run_id][0] for k, r in runs.items()}
    fingerprint = {k: s["split"]["val_fingerprint"] for k, s in summary.items()}
    assert fingerprint[(0, 0)] == fingerprint[(1, 0)] != fingerprint[(0, 1)]  # seeds share the split
    assert epochs[(0, 0)]["train_loss"] != epochs[(1, 0)]["train_loss"]  # but not their training
    index = folders.scan_dataset(tiny)
    val = {s: [it.path for it in split_dataset(index, 0.2, seed=s).val] for s in (0, 1)}
    assert val[0] != val[1] and sorted(val[0]) == val[0]


def test_an_experiments_seeds_share_one_split_seed(tiny):
    configs = service.plan_runs(
        {"data": tiny, "split_seed": 4, "image_size": 32}, ["feature_extraction", "full"], [0, 1, 2]
    )
    assert [c.seed for c in configs] == [0, 1, 2, 0, 1, 2] and {c.split_seed for c in configs} == {4}


def test_a_run_recorded_before_split_seeds_keeps_its_split_and_lrs():
    old = {"data": "d", "strategy": "partial", "seed": 3, "lr_decay": 3.0}  # as the previous release stored it
    cfg = RunConfig.from_stored(old)
    assert (cfg.split_seed, cfg.head_lr_factor, cfg.lr_decay) == (3, 1.0, 1.0)
    new = RunConfig.from_stored(cfg.model_dump())
    assert new == cfg and new.fingerprint() == cfg.fingerprint()
    assert RunConfig.from_stored({**old, "split_seed": 0}).lr_decay == 3.0  # a current record: as stored
