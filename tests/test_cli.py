"""The command line, as a user runs it: exit codes, one-line errors, --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TL_RUNS_DIR": str(cwd / "runs")}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "tl_core", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _bad_folder(kind: str, root: Path) -> Path:
    def img(p: Path):
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(p)

    ds = root / kind
    if kind == "empty":
        ds.mkdir()
    elif kind == "one_class":
        img(ds / "cat" / "a.png")
    elif kind == "mismatch":
        for split, cls in (("train", "cat"), ("train", "dog"), ("val", "cat"), ("val", "cow")):
            img(ds / split / cls / "a.png")
    return ds


@pytest.mark.parametrize("kind", ["missing", "empty", "one_class", "mismatch"])
def test_bad_folders_exit_2_with_one_clear_line(kind, tmp_path):
    ds = _bad_folder(kind, tmp_path)
    r = cli("run", "--data", str(ds), "--epochs", "1", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(ds.name) in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "experiments.db").exists() or "no runs" in cli("runs", cwd=tmp_path).stdout


def test_bad_settings_exit_2(tmp_path, tiny):
    for args in (["--epochs", "0"], ["--lr", "-1"], ["--backbone", "nope"], ["--batch-size", "500"]):
        r = cli("run", "--data", tiny, *args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, args


def test_run_show_runs_compare_json(tmp_path, tiny):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    common = ["--data", tiny, "--epochs", "2", "--image-size", "32", "--batch-size", "8", "--json", "--db", db]
    r1 = cli("run", *common, "--strategy", "feature_extraction", "--experiment", "e1", cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr
    out = json.loads(r1.stdout)  # one JSON object, nothing else on stdout
    assert out["status"] == "completed" and out["epochs"] == 2 and 0 <= out["best_val_acc"] <= 1
    r2 = json.loads(cli("run", *common, "--strategy", "scratch", "--experiment", "e1", cwd=tmp_path).stdout)
    show = json.loads(cli("show", str(out["run_id"]), "--json", "--db", db, cwd=tmp_path).stdout)
    assert show["status"] == "completed" and show["pid"] and len(show["epochs"]) == 2
    assert show["config"]["strategy"] == "feature_extraction"
    runs = json.loads(cli("runs", "--json", "--db", db, "--experiment", "e1", cwd=tmp_path).stdout)["runs"]
    assert {r["id"] for r in runs} == {out["run_id"], r2["run_id"]}
    cmp = json.loads(cli("compare", str(out["run_id"]), str(r2["run_id"]), "--json", "--db", db, cwd=tmp_path).stdout)
    assert [r["strategy"] for r in cmp["runs"]] == ["feature_extraction", "scratch"]
    # One numbering of epochs, from 1, wherever a person or a JSON consumer reads them.
    best = max(show["epochs"], key=lambda e: e["val_acc"])  # the first epoch with the best val acc
    assert [e["epoch"] for e in show["epochs"]] == [1, 2]
    assert out["best_epoch"] == show["best_epoch"] == cmp["runs"][0]["best_epoch"] == best["epoch"]
    text = cli("run", *[a for a in common if a != "--json"], "--strategy", "partial", cwd=tmp_path).stdout
    shown = json.loads(cli("show", text.split()[1], "--json", "--db", db, cwd=tmp_path).stdout)
    assert f"at epoch {shown['best_epoch']} of 2" in text
    assert cmp["runs"][0]["trainable_params"] < cmp["runs"][1]["trainable_params"]
    missing = cli("show", "999", "--db", db, cwd=tmp_path)
    assert missing.returncode == 2 and "no run with id 999" in missing.stderr


def test_a_training_failure_exits_1_and_is_recorded(tmp_path, tiny):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    args = ["--data", tiny, "--epochs", "1", "--batch-size", "8", "--json", "--db", db]
    assert cli("run", *args, "--weights", str(tmp_path / "gone.pt"), cwd=tmp_path).returncode == 2
    r = cli("run", *args, "--weights", str(corrupt), cwd=tmp_path)
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["status"] == "failed" and "not a loadable state_dict" in out["error"]
    assert json.loads(cli("show", str(out["run_id"]), "--json", "--db", db, cwd=tmp_path).stdout)["status"] == "failed"


def test_demo_data_writes_every_dataset(tmp_path):
    r = cli("demo-data", str(tmp_path / "d"), "--per-class", "3", "--size", "24", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["datasets"]) == {"animals", "digits", "digits_target"}
    for name in ("animals", "digits", "digits_target"):
        classes = sorted(p.name for p in (tmp_path / "d" / name).iterdir())
        assert len(classes) == 10
        files = list((tmp_path / "d" / name / classes[0]).iterdir())
        assert len(files) == 3 and Image.open(files[0]).mode == "RGB" and Image.open(files[0]).size == (24, 24)
