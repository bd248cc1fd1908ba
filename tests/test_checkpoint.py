"""The checkpoint (training/checkpoint.py): what best.pt and last.pt hold on disk, read back from
this release's format and the older ones, and the checks a resume makes. Training through it is
covered by test_resume.py and test_identity.py; these need no training."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tl_core.config import make_config
from tl_core.errors import UserError
from tl_core.training.checkpoint import Checkpoint

# The keys every release so far has written: a checkpoint written now must be readable by the
# code that wrote them (and read as they were written).
BEST_KEYS = {"model", "classes", "config", "run_uid", "config_fingerprint", "epoch", "val_acc"}
LAST_KEYS = {
    "model",
    "optimizer",
    "scaler",
    "finetuning",
    "terms",
    "rng",
    "loader_rng",
    "epoch",
    "best",
    "best_confusion",
    "classes",
    "wall_seconds",
    "config",
    "run_uid",
    "config_fingerprint",
}
CLASSES = ["cat", "dog"]


def _last(cfg, model: nn.Module, **extra) -> Checkpoint:
    optimizer = torch.optim.AdamW(model.parameters())
    return Checkpoint(
        model.state_dict(),
        1,
        classes=CLASSES,
        config=cfg.model_dump(),
        run_uid="u1",
        config_fingerprint=cfg.fingerprint(),
        optimizer=optimizer.state_dict(),
        scaler={},
        finetuning={"boundary": 2, "phase": (0, 3), "val_losses": [0.9, 0.8]},
        terms={},
        rng={"cpu": torch.get_rng_state()},
        loader_rng=torch.Generator().get_state(),
        best=(0.75, 0),
        best_confusion=None,
        wall_seconds=3.5,
        **extra,
    )


def test_best_and_last_are_written_with_the_keys_every_release_wrote(tmp_path):
    cfg, model = make_config(data="x"), nn.Linear(3, 2)
    Checkpoint(
        model.state_dict(),
        2,
        classes=CLASSES,
        config=cfg.model_dump(),
        run_uid="u1",
        config_fingerprint=cfg.fingerprint(),
        val_acc=0.5,
    ).save(tmp_path / "best.pt")
    assert set(torch.load(tmp_path / "best.pt", weights_only=True)) == BEST_KEYS
    _last(cfg, model).save(tmp_path / "last.pt")
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(last) == LAST_KEYS and last["best_confusion"] is None  # before a best epoch, still there
    _last(cfg, model, metrics={"val_acc": 0.75}, partial={"batches": 3}).save(tmp_path / "last.pt")
    assert set(torch.load(tmp_path / "last.pt", weights_only=True)) == LAST_KEYS | {"metrics", "partial"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary file left


def test_a_checkpoint_reads_back_as_it_was_written(tmp_path):
    cfg, model = make_config(data="x"), nn.Linear(3, 2)
    written = _last(cfg, model, metrics={"val_acc": 0.75})
    written.save(tmp_path / "last.pt")
    read = Checkpoint.load(tmp_path / "last.pt")
    assert read.resumable and read.best == (0.75, 0) and read.metrics == {"val_acc": 0.75} and read.partial is None
    assert read.finetuning_state(4) == written.finetuning and read.fingerprint() == cfg.fingerprint()
    assert all(torch.equal(read.model[k], v) for k, v in model.state_dict().items())
    assert torch.equal(read.rng["cpu"], written.rng["cpu"]) and read.legacy == {}


def test_a_checkpoint_of_an_older_release_loads(tmp_path):
    # As written before run uids, the fine-tuning state and the GPU's random stream: the plan as
    # trainable groups counted from the head, the random streams as one CPU tensor.
    cfg, model = make_config(data="x"), nn.Linear(3, 2)
    old = {
        "model": model.state_dict(),
        "optimizer": torch.optim.AdamW(model.parameters()).state_dict(),
        "rng": torch.get_rng_state(),
        "loader_rng": torch.Generator().get_state(),
        "epoch": 0,
        "best": (0.5, 0),
        "best_confusion": torch.eye(2, dtype=torch.long),
        "classes": CLASSES,
        "wall_seconds": 1.0,
        "config": cfg.model_dump(),
        "n_trainable": 1,
        "phase": (0, 2),
        "val_losses": [0.7],
    }
    torch.save(old, tmp_path / "last.pt")
    read = Checkpoint.load(tmp_path / "last.pt")
    assert read.run_uid is None and read.fingerprint() == cfg.fingerprint()
    assert torch.equal(read.rng["cpu"], old["rng"]) and set(read.rng) == {"cpu"}
    assert read.finetuning_state(5) == {"boundary": 4, "phase": (0, 2), "val_losses": [0.7]}
    assert read.scaler is None and read.terms is None and read.metrics is None
    assert set(read.to_dict()) >= set(old)  # written again, nothing of it is lost
    # a checkpoint that holds only weights and their epoch (as a test or a tool writes it)
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "best.pt")
    weights = Checkpoint.load(tmp_path / "best.pt")
    assert weights.epoch == 3 and not weights.resumable and weights.classes == []


def test_a_file_that_is_no_checkpoint_is_refused_clearly(tmp_path):
    torch.save({"weights": {}}, tmp_path / "last.pt")
    with pytest.raises(UserError, match="not a checkpoint TransferLab wrote"):
        Checkpoint.load(tmp_path / "last.pt")


def test_a_resume_takes_only_its_own_checkpoint_as_configured(tmp_path):
    cfg, model, path = make_config(data="x"), nn.Linear(3, 2), Path("last.pt")
    ckpt = _last(cfg, model)
    mine, other = SimpleNamespace(id=1, uid="u1"), SimpleNamespace(id=2, uid="u2")
    ckpt.check(path, mine, cfg, CLASSES)  # its own: taken
    with pytest.raises(UserError, match="checkpoint of another run"):
        ckpt.check(path, other, cfg, CLASSES)
    with pytest.raises(UserError, match="written with other settings"):
        ckpt.check(path, mine, make_config(data="x", lr=0.05), CLASSES)
    with pytest.raises(UserError, match="classes changed"):
        ckpt.check(path, mine, cfg, [*CLASSES, "lynx"])
    ckpt.run_uid = ckpt.config_fingerprint = None  # an older release's: judged by the config it holds
    ckpt.check(path, other, cfg, CLASSES)
    with pytest.raises(UserError, match="written with other settings"):
        ckpt.check(path, other, make_config(data="x", lr=0.05), CLASSES)
