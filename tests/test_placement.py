"""Placement: runs packed onto GPUs by memory (placement.py) and the worker that places them.

No CUDA needed: GPUs are fake (NVML's answers: pynvml's functions replaced, whole GPUs and MIG
devices), and training processes are captured, not started, except the one standby that proves it
takes its GPU before anything asks CUDA for a device.
"""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest
from sqlalchemy import update

from tl_core.config import make_config
from tl_core.executors import placement, worker
from tl_core.executors.placement import GPU, place
from tl_core.settings import Settings
from tl_core.store import Store
from tl_core.store.tables import SqlRun

ROOT = Path(__file__).resolve().parents[1]
H100 = 81559.0  # MiB, as nvidia-smi reports an 80 GB card


def _config(**kw) -> dict:
    return make_config(data="data/pets", **kw).model_dump()


# --- the rule ---------------------------------------------------------------------------------


def test_known_needs_fill_a_gpu_up_to_its_free_memory():
    # Each run placed settles and adds its need (and a context) to what NVML measures.
    used, placed, need = 1000.0, [("0", True)], 20000.0
    while (gpu := place([GPU("0", H100, used)], placed, need, Settings())) is not None:
        placed.append((gpu, True))
        used += need + 500
    assert len(placed) == 1 + 3  # 80559 free: 3 x (20000 + 2048 margin) fit, a fourth would not
    assert H100 - used < need + Settings().gpu_margin_mb
    assert place([GPU("0", H100, used)], placed, 5000.0, Settings()) == "0"  # a smaller kind still fits


def test_unknown_needs_go_to_an_empty_gpu_or_one_with_half_free():
    half = H100 / 2
    assert place([GPU("0", H100, H100 - 500)], [], None, Settings()) == "0"  # none of ours there: as one per GPU
    assert place([GPU("0", H100, half - 1)], [("0", True)], None, Settings()) == "0"
    assert place([GPU("0", H100, half + 1)], [("0", True)], None, Settings()) is None
    assert place([GPU("0", H100, half + 1)], [("0", True)], None, Settings(gpu_unknown_share=0.25)) == "0"
    assert place([GPU("0", 16000.0, 7000.0)], [("0", True)], None, Settings()) == "0"  # a share, on a small GPU too


def test_a_settling_run_blocks_its_gpu_whatever_is_free():
    for need in (None, 100.0):
        assert place([GPU("0", H100, 2000.0)], [("0", False)], need, Settings()) is None
        assert place([GPU("0", H100, 2000.0), GPU("1", H100, 60000.0)], [("0", False)], need, Settings()) == "1"
        assert place([GPU("0", H100, 2000.0)], [("0", True), ("0", False)], need, Settings()) is None


def test_runs_per_gpu_caps_a_gpu():
    placed = [("0", True)] * 3
    assert place([GPU("0", H100, 3000.0)], placed, 100.0, Settings(runs_per_gpu=4)) == "0"
    assert place([GPU("0", H100, 3000.0)], placed, 100.0, Settings(runs_per_gpu=3)) is None
    assert placement.open_gpus(["0", "1"], placed, 3) == ["1"]


def test_the_gpu_with_the_most_free_memory_is_chosen():
    gpus = [GPU("0", H100, 30000.0), GPU("1", H100, 10000.0), GPU("2", 40000.0, 1000.0)]  # 51559, 71559, 39000 free
    assert place(gpus, [], 1000.0, Settings()) == "1"
    assert place(gpus, [(g, True) for g in ("0", "1", "2")], 1000.0, Settings()) == "1"
    assert place(gpus, [("0", True), ("1", False), ("2", True)], 1000.0, Settings()) == "0"
    assert place([GPU("3", H100, 0.0), GPU("1", H100, 0.0)], [], None, Settings()) == "3"  # a tie: the first listed


def test_two_gpus_share_the_runs_evenly():
    used, placed = {"0": 500.0, "1": 500.0}, []
    for _ in range(6):
        gpu = place([GPU(i, H100, u) for i, u in used.items()], placed, 8000.0, Settings())
        placed.append((gpu, True))
        used[gpu] += 8500
    assert sorted(g for g, _ in placed) == ["0", "0", "0", "1", "1", "1"]


# --- what a kind of run needs -------------------------------------------------------------------


def _finished(store: Store, config: dict, summary: dict, status: str = "completed") -> None:
    run = store.create_run(config, status="running")
    store.finish_run(run.id, status, summary=summary)


def _finished_as_found(store: Store, config: dict, summary: dict) -> None:
    """A completed run whose summary is stored as an older release (or a hand) left it: not validated,
    as the store refuses to write a gpu_memory of the wrong type (store/summary.py)."""
    run = store.create_run(config, status="running")
    store.finish_run(run.id, "completed")
    with store.engine.begin() as c:
        c.execute(update(SqlRun).where(SqlRun.id == run.id).values(summary=summary))


def test_a_kind_needs_the_largest_peak_its_completed_runs_recorded(store):
    small = _config(backbone="resnet18", batch_size=16)
    _finished(store, small, {"gpu_memory": {"peak_mb": 1500.5, "total_mb": H100}})
    _finished(store, {**small, "seed": 3, "epochs": 9}, {"gpu_memory": {"peak_mb": 1800.0, "total_mb": H100}})
    _finished(store, small, {"gpu_memory": {"peak_mb": 9000.0}}, status="failed")
    # A head on cached features trains in less than its probe step (the whole model) reserved.
    _finished(
        store, _config(backbone="resnet18", batch_size=64), {"gpu_memory": {"peak_mb": 900.0, "predicted_mb": 5000.0}}
    )
    for odd in (
        {},
        {"gpu_memory": "n/a"},
        {"gpu_memory": {"peak_mb": None}},
        {"gpu_memory": {"peak_mb": "big"}},
        {"gpu_memory": {"peak_mb": float("nan")}},
    ):
        _finished_as_found(store, _config(backbone="resnet18", image_size=224), odd)
    peaks = placement.peaks(store)
    assert peaks[placement.kind(small)] == 1800.0  # seeds and epochs do not change a run's memory
    assert peaks[placement.kind(_config(backbone="resnet18", batch_size=64))] == 5000.0
    assert placement.kind(_config(backbone="resnet18", image_size=224)) not in peaks
    assert placement.kind(_config(backbone="resnet18", strategy="full", batch_size=16)) not in peaks
    assert len(peaks) == 2


def test_a_stored_config_from_before_a_memory_setting_is_of_its_default_kind():
    old = {k: v for k, v in _config().items() if k not in ("accumulate", "checkpointing", "in_channels")}
    assert placement.kind(old) == placement.kind(_config())


# --- GPUs as NVML reports them ------------------------------------------------------------------


@dataclass
class FakeDevice:
    """A GPU (or a MIG device) as NVML would describe it."""

    uuid: str
    memory: tuple[float, float] | None = (H100, 0.0)  # total and used MiB; None: NVML cannot say
    migs: list | None = None  # in MIG mode: its slots, a FakeDevice or None (an empty slot); None: not in MIG mode
    mig_capable: bool = False  # not in MIG mode, but could be (NVML answers "disabled" rather than "not supported")


class FakeNVML:
    """pynvml's functions as a machine with `devices()` (called at each question) would answer them,
    or, with `driver=False`, as one without an NVIDIA driver (nvmlInit fails)."""

    def __init__(self, devices, driver: bool = True):
        self.devices, self.driver, self.inits = devices, driver, 0

    def install(self, monkeypatch) -> FakeNVML:
        for name in (
            "nvmlInit",
            "nvmlDeviceGetCount",
            "nvmlDeviceGetHandleByIndex",
            "nvmlDeviceGetUUID",
            "nvmlDeviceGetMigMode",
            "nvmlDeviceGetMaxMigDeviceCount",
            "nvmlDeviceGetMigDeviceHandleByIndex",
            "nvmlDeviceGetMemoryInfo",
        ):
            monkeypatch.setattr(pynvml, name, getattr(self, name))
        monkeypatch.setattr(placement, "_nvml_started", False)
        return self

    def nvmlInit(self):
        self.inits += 1
        if not self.driver:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    def nvmlDeviceGetCount(self):
        return len(self.devices())

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.devices()[index]

    def nvmlDeviceGetUUID(self, handle):
        return handle.uuid

    def nvmlDeviceGetMigMode(self, handle):
        if handle.migs is None and not handle.mig_capable:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        on = pynvml.NVML_DEVICE_MIG_ENABLE if handle.migs is not None else pynvml.NVML_DEVICE_MIG_DISABLE
        return [on, on]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle):
        return len(handle.migs or [])

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, index):
        if handle.migs[index] is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return handle.migs[index]

    def nvmlDeviceGetMemoryInfo(self, handle):
        if handle.memory is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        total, used = (int(mb * placement.MiB) for mb in handle.memory)
        return SimpleNamespace(total=total, used=used, free=total - used)


# GPU 2 is in MIG mode: two MIG devices (slot 1 empty) with their own memory; GPU 3's memory cannot be read.
MIG_A = "MIG-1111aaaa-0000-5000-8000-000000000001"
MIG_B = "MIG-2222bbbb-0000-5000-8000-000000000002"
MACHINE = [
    FakeDevice("GPU-aaaa", (H100, 1024.0)),
    FakeDevice("GPU-bbbb", (H100, 40000.0), mig_capable=True),
    FakeDevice(
        "GPU-cccc", (H100, 0.0), migs=[FakeDevice(MIG_A, (19968.0, 13.0)), None, FakeDevice(MIG_B, (40192.0, 20000.0))]
    ),
    FakeDevice("GPU-dddd", None),
]


@pytest.fixture
def nvml(monkeypatch):
    """A fake NVML on MACHINE, no CUDA_VISIBLE_DEVICES."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return FakeNVML(lambda: MACHINE).install(monkeypatch)


def test_gpus_are_whole_gpus_and_mig_devices_with_their_own_memory(nvml):
    assert placement.gpus() == [
        GPU("0", H100, 1024.0),
        GPU("1", H100, 40000.0),
        GPU(MIG_A, 19968.0, 13.0),
        GPU(MIG_B, 40192.0, 20000.0),
    ]  # GPU 2 itself is not a device CUDA is given
    assert placement.gpus()[1].free_mb == 41559.0 and placement.gpus()[3].free_mb == 20192.0
    assert placement.gpu_count() == 5  # GPU 3 counts (CUDA sees it) though nothing is placed on it
    assert nvml.inits == 1  # started once, then asked: each measure costs no new start


@pytest.mark.parametrize(
    "visible, ids",
    [
        ("1", ["1"]),
        ("GPU-bbbb,0", ["1", "0"]),
        ("GPU-b", ["1"]),
        ("1,7,0", ["1"]),
        ("0,0", ["0"]),
        ("", []),
        ("-1", []),
        ("2", [MIG_A, MIG_B]),
        ("GPU-cccc,0", [MIG_A, MIG_B, "0"]),
        (MIG_B, [MIG_B]),
        ("MIG-2222", [MIG_B]),
        (f"{MIG_B},1", [MIG_B, "1"]),
        ("MIG-", []),
        ("GPU-", []),
        ("MIG-GPU-cccc/1/0,0", []),
        ("3,0", ["0"]),
    ],
)
def test_gpus_are_those_cuda_visible_devices_lets_cuda_see(nvml, monkeypatch, visible, ids):
    # By index (NVML's, nvidia-smi's), GPU UUID or prefix (one GPU's: "GPU-" names four), MIG UUID or
    # prefix; CUDA stops at the first entry that names nothing. GPU 3 is seen but not measured.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert [g.id for g in placement.gpus()] == ids


def test_gpu_count_is_narrowed_the_same_way(nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,0,-1,1")
    assert placement.gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG_A)
    assert placement.gpu_count() == 1  # a standby on one MIG device warms CUDA on it (training.startup.warm_cuda)


def test_without_a_driver_there_are_no_gpus(monkeypatch):
    FakeNVML(lambda: MACHINE, driver=False).install(monkeypatch)
    assert placement.gpus() == [] and placement.gpu_count() == 0
    assert worker.max_concurrent() == 1  # a CPU machine: one run at a time


def test_this_machine_without_a_driver_has_no_gpus(monkeypatch):
    # The real pynvml: nvmlInit fails here (no libnvidia-ml), as on any CPU machine or GPU-less container.
    if Path("/proc/driver/nvidia").exists():
        pytest.skip("an NVIDIA driver here: NVML starts")
    monkeypatch.setattr(placement, "_nvml_started", False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert placement.gpus() == [] and placement.gpu_count() == 0


def test_nvml_failing_midway_measures_nothing(nvml, monkeypatch):
    def lost(handle):  # a GPU fallen off the bus
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", lost)
    assert placement.gpus() == [] and placement.gpu_count() == 0


# --- the worker, on fake GPUs ---------------------------------------------------------------------


class FakeProcess:
    """What subprocess.Popen would have started: its arguments and environment, and for a standby
    what the worker wrote on its stdin. It runs until the test ends it."""

    pids = itertools.count(4_000_000)

    def __init__(self, args, env=None, stdin=None, **_):
        self.args, self.env, self.pid, self.returncode = args, env, next(self.pids), None
        self.stdin = io.BytesIO() if stdin == subprocess.PIPE else None
        if self.stdin is not None:
            self.stdin.close = lambda: None  # keep what was written readable
        started.append(self)

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):  # after a kill: it ended
        self.returncode = -9 if self.returncode is None else self.returncode
        return self.returncode


started: list[FakeProcess] = []


@pytest.fixture
def fake_gpus(store, monkeypatch):
    """A worker of `store` on two fake whole GPUs, starting no process: the list returned holds what
    NVML measures of each (GPU i at position i), and a test changes it as memory comes and goes."""
    started.clear()
    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    monkeypatch.delenv("TL_MAX_CONCURRENT", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("TL_STANDBY", "0")
    gpus = [GPU("0", H100, 30000.0), GPU("1", H100, 1000.0)]
    FakeNVML(lambda: [FakeDevice(f"GPU-{g.id}", (g.total_mb, g.used_mb)) for g in gpus]).install(monkeypatch)
    return gpus


def _queue(store: Store, **kw) -> int:
    return store.create_run(_config(**kw), status="queued").id


def test_the_worker_places_runs_and_gives_each_process_its_gpu(store, fake_gpus):
    w = worker.Worker(store.url)
    first, second, third = (_queue(store, seed=s) for s in range(3))
    w.step()
    # Never measured: the emptier GPU, then the other (the first is settling); the third waits, queued.
    assert [(p.env["CUDA_VISIBLE_DEVICES"], p.env["CUDA_DEVICE_ORDER"]) for p in started] == [
        ("1", "PCI_BUS_ID"),
        ("0", "PCI_BUS_ID"),
    ]
    assert [p.args[p.args.index("train-run") + 1] for p in started] == [str(first), str(second)]
    assert store.get_run(third).status == "queued"
    w.step()
    assert len(started) == 2 and store.get_run(third).status == "queued"

    # The first records its start and an epoch: settled, its memory measured; GPU 1 has room for more.
    store.update_run(first, environment={"device": "cuda"}, epochs_done=1)
    fake_gpus[1] = GPU("1", H100, 7000.0)
    w.step()
    assert store.get_run(first).environment == {"device": "cuda", "gpu": "1"}
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in started] == ["1", "0", "1"]
    assert store.get_run(third).status == "running" and w.children[third].gpu == "1"

    # A run whose process ended before it settled still records where it was placed.
    store.finish_run(second, "failed", error="probe: would not fit")
    started[1].returncode = 2
    w.step()
    assert store.get_run(second).environment == {"gpu": "0"} and second not in w.children


def test_a_known_need_waits_queued_until_a_gpu_has_room(store, fake_gpus):
    big = dict(backbone="resnet18", image_size=224, batch_size=64)
    _finished(store, _config(**big), {"gpu_memory": {"peak_mb": 30000.0, "total_mb": H100}})
    fake_gpus[:] = [GPU("0", H100, 60000.0)]
    w = worker.Worker(store.url)
    first = _queue(store, **big)
    w.step()
    store.update_run(first, epochs_done=1)
    w.step()  # settled; 21559 MiB free, 32048 needed
    waiting = _queue(store, **big)
    w.step()
    assert len(started) == 1 and store.get_run(waiting).status == "queued"
    fake_gpus[:] = [GPU("0", H100, 40000.0)]
    w.step()
    assert store.get_run(waiting).status == "running" and started[-1].env["CUDA_VISIBLE_DEVICES"] == "0"


def test_a_run_claimed_in_a_race_that_does_not_fit_goes_back_to_the_queue(store, fake_gpus, monkeypatch):
    small, big = dict(backbone="resnet18", batch_size=8), dict(backbone="resnet18", batch_size=256)
    _finished(store, _config(**small), {"gpu_memory": {"peak_mb": 1000.0}})
    _finished(store, _config(**big), {"gpu_memory": {"peak_mb": 30000.0}})
    fake_gpus[:] = [GPU("0", H100, 1000.0)]
    w = worker.Worker(store.url)
    settled = _queue(store)
    w.step()
    store.update_run(settled, epochs_done=1)
    fake_gpus[:] = [GPU("0", H100, 60000.0)]  # 21559 MiB free: room for the small kind only
    head, behind = _queue(store, **small), _queue(store, **big)
    real = w.store.claim_next_queued

    def racing(*args, **kw):  # another worker claims the head between our look and our claim
        store.claim_next_queued(1, None, "local")
        return real(*args, **kw)

    monkeypatch.setattr(w.store, "claim_next_queued", racing)
    w.step()
    assert store.get_run(head).worker_pid == 1 and len(started) == 1
    back = store.get_run(behind)
    assert (back.status, back.worker_id, back.worker_pid, back.started_at) == ("queued", None, None, None)


def test_the_standby_is_handed_the_run_and_its_gpu(store, fake_gpus, monkeypatch):
    monkeypatch.setenv("TL_STANDBY", "1")
    w = worker.Worker(store.url)
    w.step()
    (standby,) = started
    assert "--standby" in standby.args and standby.env is None  # it takes its GPU with its run
    run_id = _queue(store)
    w.step()
    assert standby.stdin.getvalue() == f"{run_id} 1\n".encode()
    assert w.children[run_id].proc is standby and store.get_run(run_id).pid == standby.pid


@pytest.mark.parametrize("fixed", ["TL_MAX_CONCURRENT", "--max-concurrent"])
def test_a_fixed_number_of_runs_places_none(store, fake_gpus, monkeypatch, fixed):
    monkeypatch.setenv("TL_STANDBY", "1")
    if fixed == "TL_MAX_CONCURRENT":
        monkeypatch.setenv("TL_MAX_CONCURRENT", "2")
    w = worker.Worker(store.url, concurrency=2 if fixed == "--max-concurrent" else None)
    w.step()
    ids = [_queue(store, seed=s) for s in range(3)]
    w.step()
    standby, fresh = started[:2]
    assert standby.stdin.getvalue() == f"{ids[0]}\n".encode() and fresh.env is None
    assert [store.get_run(i).status for i in ids] == ["running", "running", "queued"]


def test_a_run_on_a_mig_device_is_given_its_uuid(store, fake_gpus, monkeypatch):
    monkeypatch.setenv("TL_STANDBY", "1")
    FakeNVML(
        lambda: [
            FakeDevice("GPU-cccc", migs=[FakeDevice(MIG_A, (19968.0, 19000.0)), FakeDevice(MIG_B, (40192.0, 13.0))])
        ]
    ).install(monkeypatch)
    w = worker.Worker(store.url)
    assert w.gpus == [MIG_A, MIG_B]
    w.step()
    (standby,) = started
    first, second = _queue(store, seed=0), _queue(store, seed=1)
    w.step()
    assert standby.stdin.getvalue() == f"{first} {MIG_B}\n".encode()  # the MIG device with room
    assert started[1].env["CUDA_VISIBLE_DEVICES"] == MIG_A and w.children[second].gpu == MIG_A


def test_a_cpu_machine_trains_one_run_at_a_time(store, fake_gpus, monkeypatch):
    FakeNVML(lambda: [], driver=False).install(monkeypatch)  # no NVIDIA driver: NVML does not start
    w = worker.Worker(store.url)
    assert w.gpus == [] and w.concurrency == 1
    ids = [_queue(store, seed=s) for s in range(2)]
    w.step()
    assert [p.env for p in started] == [None]
    assert [store.get_run(i).status for i in ids] == ["running", "queued"]


# --- the standby, for real ----------------------------------------------------------------------------


def test_a_standby_is_on_its_gpu_before_anything_asks_cuda_for_one(tmp_path, tiny):
    # Every CUDA device query goes through torch._C._cuda_getDeviceCount (is_available, device_count);
    # CUDA reads CUDA_VISIBLE_DEVICES once, at the first. Each query notes what it was then.
    db, asked = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "asked.txt"
    store = Store(db)
    cfg = make_config(data=tiny, image_size=32, batch_size=8, workers=0, epochs=1)
    run_id = store.create_run(cfg.model_dump(), status="queued").id
    code = (
        f"import os, sys, torch\n"
        f"real = torch._C._cuda_getDeviceCount\n"
        f"def asked():\n"
        f"    with open({str(asked)!r}, 'a') as f:\n"
        f"        f.write(f\"{{os.environ.get('CUDA_VISIBLE_DEVICES')}}\\n\")\n"
        f"    return real()\n"
        f"torch._C._cuda_getDeviceCount = asked\n"
        f"from tl_core.cli import main\n"
        f"sys.exit(main(['train-run', '--standby', '--db', {db!r}]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=f"{run_id} 3\n",
        text=True,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert asked.read_text().split() and set(asked.read_text().split()) == {"3"}
    run = store.get_run(run_id)
    assert run.status == "completed"
    assert "CUDA_VISIBLE_DEVICES=3" in (Path(run.run_dir) / "train.log").read_text()
