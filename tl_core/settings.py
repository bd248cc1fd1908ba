"""Settings: the one place that reads the environment. Every other module asks `current()`.

| variable              | default                     | meaning                                            |
|-----------------------|-----------------------------|----------------------------------------------------|
| DATABASE_URL          | sqlite:///experiments.db    | the experiment store                               |
| TL_RUNS_DIR           | runs                        | run folders, worker files (store/run_folders.py)   |
| TL_CACHE_DIR          | $TL_RUNS_DIR/cache          | decoded images, frozen features, pixel descriptors |
| TL_CACHE_MAX_GB       | 20                          | the largest single cache entry                     |
| TL_DATA_ROOTS         | data                        | folders the dashboard may read datasets from (:)   |
| TL_MAX_CONCURRENT     | by GPU memory, 1 on CPU     | runs a worker trains at once (a fixed number)      |
| TL_RUNS_PER_GPU       | 8                           | unset TL_MAX_CONCURRENT: most runs on one GPU      |
| TL_GPU_MARGIN_MB      | 2048                        | free GPU memory kept beyond a run's measured peak  |
| TL_GPU_UNKNOWN_SHARE  | 0.5                         | share of a GPU free for a run never measured       |
| TL_STANDBY            | 1                           | keep a training process imported ahead of need     |
| TL_NO_WORKER          | (unset)                     | the dashboard starts no worker (tests, viewers)    |
| TL_PASSWORD           | (unset)                     | needed to serve the dashboard beyond localhost     |
| TL_MAX_IMAGE_PIXELS   | 64000000                    | larger images are refused from their header        |
| TL_OFFLINE            | (unset)                     | never try to download weights                      |
| CUDA_VISIBLE_DEVICES  | (unset)                     | the GPUs a worker trains on (as CUDA sees them)    |
| TL_EXECUTOR           | local                       | who trains queued runs: local (worker.py) or ray   |
| RAY_ADDRESS           | (unset: a local Ray)        | the Ray cluster TL_EXECUTOR=ray sends runs to      |
| TL_HEARTBEAT_S        | 5                           | how often a worker records that it is alive        |
| TL_WORKER_TIMEOUT_S   | 60                          | silence after which a worker's runs are failed     |
| TL_RESUME_ON_RESTART  | 1                           | a worker resumes the runs its predecessor left     |
| TL_STANDBY_IDLE_S     | 300                         | an unused standby process is released after this   |

Settings are read afresh on each call (a dozen dictionary lookups), so a test or a process that
changes its environment sees the change; nothing else in tl_core touches os.environ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DB_URL = "sqlite:///experiments.db"
TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DB_URL
    runs_dir: Path = Path("runs")
    cache_dir: Path = Path("runs") / "cache"
    cache_max_gb: float = 20.0
    data_roots: tuple[Path, ...] = (Path("data"),)
    max_concurrent: int | None = None  # None: as many as the GPUs' memory holds (placement.py), one on a CPU
    runs_per_gpu: int = 8
    gpu_margin_mb: float = 2048.0
    gpu_unknown_share: float = 0.5
    standby: bool = True
    no_worker: bool = False
    password: str | None = None
    max_image_pixels: int = 64_000_000
    offline: bool = False
    cuda_visible_devices: str | None = None
    executor: str = "local"  # "local" or "ray"
    ray_address: str | None = None
    heartbeat_s: float = 5.0
    worker_timeout_s: float = 60.0
    resume_on_restart: bool = True
    standby_idle_s: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        runs = Path(env.get("TL_RUNS_DIR") or "runs")
        concurrent = env.get("TL_MAX_CONCURRENT", "").strip()
        return cls(
            database_url=env.get("DATABASE_URL") or DEFAULT_DB_URL,
            runs_dir=runs,
            cache_dir=Path(env["TL_CACHE_DIR"]) if env.get("TL_CACHE_DIR") else runs / "cache",
            cache_max_gb=float(env.get("TL_CACHE_MAX_GB") or 20.0),
            data_roots=tuple(Path(p) for p in (env.get("TL_DATA_ROOTS") or "data").split(os.pathsep) if p.strip()),
            max_concurrent=max(1, int(concurrent)) if concurrent else None,
            runs_per_gpu=max(1, int(env.get("TL_RUNS_PER_GPU") or 8)),
            gpu_margin_mb=float(env.get("TL_GPU_MARGIN_MB") or 2048.0),
            gpu_unknown_share=float(env.get("TL_GPU_UNKNOWN_SHARE") or 0.5),
            standby=env.get("TL_STANDBY", "1").strip().lower() not in ("0", "false", "no", "off"),
            no_worker=env.get("TL_NO_WORKER", "").strip().lower() in TRUE,
            password=env.get("TL_PASSWORD") or None,
            max_image_pixels=int(env.get("TL_MAX_IMAGE_PIXELS") or 64_000_000),
            offline=bool(env.get("TL_OFFLINE")),
            cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
            executor=(env.get("TL_EXECUTOR") or "local").strip().lower(),
            ray_address=env.get("RAY_ADDRESS") or None,
            heartbeat_s=float(env.get("TL_HEARTBEAT_S") or 5.0),
            worker_timeout_s=float(env.get("TL_WORKER_TIMEOUT_S") or 60.0),
            resume_on_restart=env.get("TL_RESUME_ON_RESTART", "1").strip().lower() not in ("0", "false", "no", "off"),
            standby_idle_s=float(env.get("TL_STANDBY_IDLE_S") or 300.0),
        )


def current() -> Settings:
    """The settings as the environment has them now."""
    return Settings.from_env(os.environ)


def child_environment(**overrides: str) -> dict[str, str]:
    """This process's environment with `overrides`: what a process it starts is given (the service
    gives the dashboard the database it serves)."""
    return {**os.environ, **overrides}


def gpu_environment(gpu: str) -> dict[str, str]:
    """What gives a process `gpu` alone, as its cuda:0: a GPU's index as nvidia-smi (and NVML) numbers
    it, or a MIG device's UUID (placement.GPU.id); CUDA told to count in PCI bus order as nvidia-smi
    does (its default, fastest first, may differ on mixed GPUs)."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(gpu)}


def pin_gpu(gpu: str) -> None:
    """This process trains on `gpu` alone (a standby handed its run). CUDA reads these once, when it is
    first initialised: call it before anything asks CUDA for a device."""
    os.environ.update(gpu_environment(gpu))
