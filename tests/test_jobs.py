"""A page's jobs (service/jobs.py) through the queue and the worker's GPU placement (worker.py,
placement.py): claimed before runs, placed by memory on fake GPUs (NVML's answers, as in
test_placement.py) and given their GPU alone; their end recorded by their own process; jobs whose
process died, cancelled jobs, jobs of a worker that stops; a dashboard with no worker.

Processes are captured (test_placement.FakeProcess), except the one job that proves its result lands.
"""

from __future__ import annotations

import signal
import socket
import subprocess

import pytest

from tl_core import cli
from tl_core.config import make_config
from tl_core.executors import placement, worker
from tl_core.executors.placement import GPU
from tl_core.service import jobs
from tl_core.store import Store
from tl_core.store.run_folders import job_log

from .helpers import ROOT
from .test_placement import H100, FakeNVML, _config, _finished, _queue, fake_gpus, started  # noqa: F401

REAL_POPEN = subprocess.Popen  # before fake_gpus replaces it


@pytest.fixture
def served(store, fake_gpus, monkeypatch):
    """A worker of `store` on the two fake GPUs, registered (heartbeating): the database is served."""
    monkeypatch.delenv("TL_NO_WORKER", raising=False)
    monkeypatch.delenv("TL_EXECUTOR", raising=False)
    w = worker.Worker(store.url)
    w.start()
    return w


def _cfg(tiny: str = "data/pets", **kw):
    return make_config(data=tiny, image_size=32, batch_size=8, workers=0, experiment="jobs", **kw)


def _job_of(proc) -> str:
    return proc.args[proc.args.index("--job") + 1]


def test_a_page_job_is_claimed_by_a_worker_placed_on_a_gpu_and_its_result_lands(store, served, tiny):
    job = jobs.start(store, "probe", _cfg(tiny), ["--max-per-class", "4"])
    assert started == [] and store.get_job(job.id).status == "queued"  # a worker serves the database: queued only
    served.step()
    (proc,) = started
    assert proc.args[1:4] == ["-m", "tl_core", "probe"] and _job_of(proc) == job.id
    assert (proc.env["CUDA_VISIBLE_DEVICES"], proc.env["CUDA_DEVICE_ORDER"]) == ("1", "PCI_BUS_ID")  # the emptier
    now = store.get_job(job.id)
    assert (now.status, now.worker_id, now.gpu, now.pid, now.host) == (
        "running",
        served.id,
        "1",
        proc.pid,
        socket.gethostname(),
    )
    assert jobs.result(store, job) is None and jobs.failure(store, job) is None

    # Its process, for real, as the worker started it (no CUDA here: it sees no GPU and probes on the CPU).
    with open(job_log(job.id), "ab") as log:
        code = REAL_POPEN(proc.args, env=proc.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).wait(timeout=600)
    assert code == 0, job_log(job.id).read_text()
    proc.returncode = 0
    served.step()
    assert job.id not in served.jobs
    done = store.get_job(job.id)
    assert (done.status, done.error, done.peak_mb) == ("completed", None, None)  # recorded by the job itself
    found = jobs.result(store, job)
    assert found["job"] == job.id and 0 <= found["linear_probe_acc"] <= 1 and jobs.failure(store, job) is None


def test_jobs_go_before_queued_runs_and_a_job_settles_its_gpu_until_it_ends(store, served, fake_gpus):
    run_id = _queue(store)  # queued before the job
    job = jobs.start(store, "probe", _cfg())
    fake_gpus[:] = [GPU("0", H100, 1000.0)]
    served.step()
    assert [_job_of(p) for p in started] == [job.id] and store.get_run(run_id).status == "queued"
    assert started[0].env["CUDA_VISIBLE_DEVICES"] == "0"
    served.step()
    assert len(started) == 1  # the GPU takes nothing else while the job runs
    store.finish_job(job.id, "completed", peak_mb=900.0)  # as its process records its end
    started[0].returncode = 0
    served.step()
    assert store.get_run(run_id).status == "running" and started[1].env["CUDA_VISIBLE_DEVICES"] == "0"


def test_a_job_needs_what_its_kind_took_and_waits_for_a_gpu_with_room(store, served, fake_gpus):
    big = dict(backbone="resnet18", image_size=224, batch_size=64)
    _finished(store, _config(**big), {"gpu_memory": {"peak_mb": 30000.0}})
    fake_gpus[:] = [GPU("0", H100, 1000.0)]
    settled = _queue(store)
    served.step()
    store.update_run(settled, epochs_done=1)
    fake_gpus[:] = [GPU("0", H100, 60000.0)]  # 21559 MiB free beside the settled run
    lr = jobs.start(store, "lr-find", make_config(data="data/pets", experiment="jobs", **big))
    probe = jobs.start(store, "probe", make_config(data="data/pets", experiment="jobs", **big))
    served.step()
    # The LR finder trains like a run of its kind (30000 MiB + margin: waits); the probe, never measured, is small.
    assert [_job_of(p) for p in started[1:]] == [probe.id]
    assert store.get_job(lr.id).status == "queued" and jobs.failure(store, lr) is None  # still waiting, not failed
    store.finish_job(probe.id, "completed", peak_mb=5000.0)
    started[1].returncode = 0
    fake_gpus[:] = [GPU("0", H100, 40000.0)]
    served.step()
    assert [_job_of(p) for p in started[1:]] == [probe.id, lr.id] and store.get_job(lr.id).gpu == "0"

    # A kind of job once measured needs what it took.
    run_peaks, measured = placement.peaks(store), placement.job_peaks(store)
    cfg = make_config(data="data/pets", **big).model_dump()
    assert placement.job_need("probe", cfg, run_peaks, measured) == 5000.0
    assert placement.job_need("lr-find", cfg, run_peaks, measured) == 30000.0
    assert placement.job_need("export", cfg, run_peaks, measured) == placement.SMALL_JOB_MB
    assert placement.job_need("lr-find", _config(backbone="resnet50"), run_peaks, measured) is None


def test_a_job_whose_process_died_is_failed_with_the_end_of_its_log(store, served):
    job = jobs.start(store, "probe", _cfg())
    served.step()
    job_log(job.id).write_text("loading the backbone\nTraceback (most recent call last):\nMemoryError\n")
    started[0].returncode = -9  # killed (out of memory) before it could record anything
    served.step()
    why = jobs.failure(store, job)
    assert store.get_job(job.id).status == "failed" and "exit code -9" in why and "MemoryError" in why
    assert job.id not in served.jobs


def test_a_cancelled_job_is_stopped_or_never_started(store, served, monkeypatch):
    signals = []
    monkeypatch.setattr(worker.os, "killpg", lambda pid, sig: signals.append((pid, sig)))
    running = jobs.start(store, "probe", _cfg())
    served.step()
    assert jobs.cancel(store, running).status == "cancelled"
    served.step()
    assert (started[0].pid, signal.SIGTERM) in signals  # its process group is stopped
    queued = jobs.start(store, "probe", _cfg())
    jobs.cancel(store, queued)
    served.step()
    assert len(started) == 1 and store.get_job(queued.id).status == "cancelled"
    started[0].returncode = -15
    served.step()
    assert running.id not in served.jobs and store.get_job(running.id).status == "cancelled"  # not failed
    assert jobs.failure(store, running) == "cancelled"


def test_a_stopping_worker_puts_its_jobs_back_for_the_next_one(store, served):
    job = jobs.start(store, "probe", _cfg())
    served.step()
    served.stop()
    back = store.get_job(job.id)
    assert (back.status, back.worker_id, back.pid, back.gpu) == ("queued", None, None, None)
    nxt = worker.Worker(store.url)
    nxt.step()
    assert [_job_of(p) for p in started] == [job.id, job.id] and store.get_job(job.id).worker_id == nxt.id


def test_jobs_of_a_worker_gone_silent_are_failed(store, served):
    job = jobs.start(store, "probe", _cfg())
    served.step()
    store.stop_worker(served.id)  # as if it had died: another worker, or the waiting page, notices
    assert "stopped while it ran" in jobs.failure(store, job)


def test_with_no_worker_allowed_the_dashboard_runs_the_job_on_the_gpu_with_most_room(store, fake_gpus, monkeypatch):
    monkeypatch.setenv("TL_NO_WORKER", "1")
    job = jobs.start(store, "probe", _cfg())
    (proc,) = started
    assert _job_of(proc) == job.id and proc.args[-3:] == ["--db", store.url, "--json"]
    assert proc.env["CUDA_VISIBLE_DEVICES"] == "1"  # 80559 MiB free against 51559
    now = store.get_job(job.id)
    assert (now.status, now.worker_id, now.pid, now.gpu) == ("running", None, proc.pid, "1")
    # Its process ends without a result (its pid is no live process): the waiting page says why.
    job_log(job.id).write_text("error: data/pets is not a folder of images\n")
    assert jobs.failure(store, job) == "its process ended without a result: data/pets is not a folder of images"


def test_without_a_driver_the_dashboard_runs_the_job_on_the_cpu(store, fake_gpus, monkeypatch):
    monkeypatch.setenv("TL_NO_WORKER", "1")
    FakeNVML(lambda: [], driver=False).install(monkeypatch)
    jobs.start(store, "probe", _cfg())
    assert started[0].env is None


def test_with_no_live_worker_the_dashboard_starts_one_and_the_job_waits_for_it(store, fake_gpus, monkeypatch):
    monkeypatch.delenv("TL_NO_WORKER", raising=False)
    monkeypatch.delenv("TL_EXECUTOR", raising=False)
    job = jobs.start(store, "probe", _cfg())
    assert [p.args[3] for p in started] == ["worker"] and store.get_job(job.id).status == "queued"
    monkeypatch.setenv("TL_EXECUTOR", "ray")  # Ray's executor trains runs only: the dashboard runs it itself
    ray_job = jobs.start(store, "probe", _cfg())
    assert _job_of(started[-1]) == ray_job.id and store.get_job(ray_job.id).worker_id is None


def test_a_predict_or_export_job_is_of_its_runs_kind(store, served):
    cfg = _config(backbone="resnet18", batch_size=16)
    run = store.create_run(cfg, "jobs", status="completed")
    assert jobs.start_command(store, "export", "jobs", [str(run.id), "--format", "onnx"]).config == cfg
    assert jobs.start_command(store, "predict", "jobs", ["bundle.onnx", "a.png"]).config == {}


def test_a_job_process_records_its_own_failure(store):
    job = store.create_job("f" * 32, "export", "jobs", ["999", "--format", "onnx"], {})
    store.claim_job(job.id, None, socket.gethostname(), None)
    assert cli.main(["export", "999", "--format", "onnx", "--job", job.id, "--db", store.url]) == 2
    failed = store.get_job(job.id)
    assert (failed.status, failed.error) == ("failed", "no run with id 999")


def test_two_claimers_of_one_job_get_it_once(tmp_path):
    store, other = Store(f"sqlite:///{tmp_path / 'j.db'}"), Store(f"sqlite:///{tmp_path / 'j.db'}")
    job = store.create_job("a" * 32, "probe", "jobs", [], {})
    assert store.claim_job(job.id, 1, "box", "0") and not other.claim_job(job.id, 2, "box", "1")
    assert store.get_job(job.id).worker_id == 1
    store.close(), other.close()
