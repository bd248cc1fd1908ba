"""Logs people read after the fact (tl_core/logs.py): the service, its worker and each run's
train.log write every line with its time and level; `python -m tl_core logs RUN [--follow]`
prints a run's log; `worker --health` says whether this machine's worker heartbeats."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from tl_core import cli
from tl_core.store import Store
from tl_core.store.run_folders import run_folder

from .test_worker import ROOT, _queue

TIMED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \w+\[\d+\]: \S")


def _untimed(text: str) -> list[str]:
    return [line for line in text.splitlines() if not TIMED.match(line)]


def test_the_service_worker_and_run_log_every_line_with_its_time_and_logs_follows_the_run_to_its_end(tiny, tmp_path):
    db = f"sqlite:///{tmp_path / 'logs.db'}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TL_RUNS_DIR": str(tmp_path / "runs"),
        "TL_MAX_CONCURRENT": "1",
        "TL_STANDBY": "0",
        "TL_HEARTBEAT_S": "0.5",
        "TL_OFFLINE": "1",
    }
    env.pop("TL_NO_WORKER", None)
    store = Store(db)
    run_id = _queue(store, tiny, epochs=2, strategy="full")
    cmd = [sys.executable, "-m", "tl_core"]
    # Following a run that has not started yet: it waits for the log, then ends with the run.
    follow = subprocess.Popen(
        [*cmd, "logs", str(run_id), "--follow", "--db", db],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert subprocess.run([*cmd, "worker", "--health", "--db", db], cwd=tmp_path, env=env).returncode == 1
    with open(tmp_path / "serve.log", "wb") as out:
        serve = subprocess.Popen(
            [*cmd, "serve", "--no-dashboard", "--db", db],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        followed, err = follow.communicate(timeout=240)
        assert follow.returncode == 0, err
        run = store.get_run(run_id)
        assert run.status == "completed", run.error
        health = subprocess.run(
            [*cmd, "worker", "--health", "--db", db, "--json"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert health.returncode == 0 and json.loads(health.stdout)["healthy"], health.stdout + health.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=90) == 0
    log = (run_folder(run) / "train.log").read_text()
    assert "epoch 2/2 " in log and f"run {run_id} completed" in log and not _untimed(log), log
    assert followed == log  # --follow printed it whole, its last line (written after the run ended) too
    shown = subprocess.run(
        [*cmd, "logs", str(run_id), "--tail", "1", "--db", db], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0 and shown.stdout == log.splitlines(keepends=True)[-1]
    served = (tmp_path / "serve.log").read_text()
    assert "supervisor[" in served and "worker[" in served and not _untimed(served), served
    assert subprocess.run([*cmd, "worker", "--health", "--db", db], cwd=tmp_path, env=env).returncode == 1  # stopped


def test_worker_health_is_its_heartbeat_younger_than_the_worker_timeout(tmp_path, monkeypatch, capsys):
    db = f"sqlite:///{tmp_path / 'h.db'}"
    store = Store(db)
    assert cli.main(["worker", "--health", "--db", db]) == 1
    assert "unhealthy: no worker of this database" in capsys.readouterr().out
    store.register_worker("another-host", os.getpid())  # another machine's worker is not this one's health
    assert cli.main(["worker", "--health", "--db", db]) == 1
    capsys.readouterr()
    worker = store.register_worker(socket.gethostname(), os.getpid())
    assert cli.main(["worker", "--health", "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["worker_id"] == worker
    monkeypatch.setenv("TL_WORKER_TIMEOUT_S", "0.2")
    time.sleep(0.5)  # no heartbeat since: older than the timeout
    assert cli.main(["worker", "--health", "--db", db]) == 1
    assert "unhealthy" in capsys.readouterr().out
    store.heartbeat(worker)
    assert cli.main(["worker", "--health", "--db", db]) == 0
    store.stop_worker(worker)
    assert cli.main(["worker", "--health", "--db", db]) == 1


def test_logs_prints_a_runs_log_its_tail_and_says_when_there_is_none(store, capsys):
    run = store.create_run({"data": "x"}, status="failed")
    assert cli.main(["logs", str(run.id), "--db", store.url]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "has no log" in err
    folder = run_folder(run)
    folder.mkdir(parents=True)
    (folder / "train.log").write_text("".join(f"line {i} é\n" for i in range(5)))
    assert cli.main(["logs", str(run.id), "--follow", "--db", store.url]) == 0  # an ended run: printed, done
    assert capsys.readouterr().out == "".join(f"line {i} é\n" for i in range(5))
    assert cli.main(["logs", str(run.id), "--tail", "2", "--db", store.url, "--json"]) == 0
    tail = {"run_id": run.id, "status": "failed", "log": "line 3 é\nline 4 é\n"}
    assert json.loads(capsys.readouterr().out) == tail
    assert cli.main(["logs", "999", "--db", store.url]) == 2
