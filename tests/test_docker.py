"""What the Docker image relies on, tested without a Docker engine: the entrypoint and health check
scripts run directly, and the promises of the Dockerfile (pinned CUDA torch, non-root, an init,
a health check), of docker-compose.yml (shared memory, the worker's health, PostgreSQL not open to
all with a default password) and of the README. docker/check-image.sh builds and runs the image
itself (not part of the tests: it installs torch's CUDA wheels)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from tl_core.executors.processes import is_worker_process, pid_alive
from tl_core.store import Store

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "docker" / "healthcheck.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(state: Path, port: int) -> dict:
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TL_RUNS_DIR", "TORCH_HOME", "TL_DATA_ROOTS")
    }
    tmp = state.parent / "tmp"  # the container's /tmp: where the entrypoint says what it serves
    tmp.mkdir(exist_ok=True)
    env.update(
        TL_STATE=str(state),
        TL_HOST="127.0.0.1",
        TL_PORT=str(port),
        TL_DEMO_PER_CLASS="3",
        TMPDIR=str(tmp),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
    )
    return env


def test_entrypoint_serves_the_dashboard_and_its_worker_with_state_under_tl_state(tmp_path):
    state, port = tmp_path / "state", _free_port()
    state.mkdir()
    env = {**_env(state, port), "TL_STANDBY": "0"}
    proc = subprocess.Popen(
        [str(ENTRYPOINT)], cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        _wait_healthy(proc, port)
        assert len(list((state / "demo-data" / "animals").iterdir())) == 10
        assert (state / "runs").is_dir() and (state / "torch").is_dir()
        # The worker runs beside the dashboard before any page is opened: the service's (the
        # entrypoint exec'd it), of the database under $TL_STATE, with its pid where a dashboard finds it.
        store = Store(f"sqlite:///{state / 'experiments.db'}")
        worker = int((state / "runs" / "workers" / store.instance_id / "worker.pid").read_text())
        children = psutil.Process(proc.pid).children()
        assert worker in {c.pid for c in children} and is_worker_process(worker)
        assert psutil.Process(proc.pid).cmdline()[-5:] == ["serve", "--host", "127.0.0.1", "--port", str(port)]
        family = {proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))}
        # `docker stop`: SIGTERM to PID 1 stops the dashboard and the worker, and the service exits cleanly.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        assert not [p for p in family if pid_alive(p)], "a process outlived docker stop"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _wait_healthy(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the dashboard never answered its health check")


def test_entrypoint_worker_runs_a_worker_alone_with_no_page_and_no_password(tmp_path):
    # A worker container of the team setup (docker-compose.yml, other GPU machines): served on no
    # network, so it needs no TL_PASSWORD, writes no demo data, and stops cleanly on docker stop.
    state = tmp_path / "state"
    state.mkdir()
    env = {**_env(state, _free_port()), "TL_HOST": "0.0.0.0", "TL_STANDBY": "0"}
    env.pop("TL_PASSWORD", None)
    proc = subprocess.Popen(
        [str(ENTRYPOINT), "worker"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        store = Store(f"sqlite:///{state / 'experiments.db'}")
        pid_file = state / "runs" / "workers" / store.instance_id / "worker.pid"
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.3)
        worker = int(pid_file.read_text())
        assert psutil.Process(proc.pid).cmdline()[-2:] == ["serve", "--no-dashboard"]
        # The image's health check asks this container's worker, not a dashboard (there is none).
        assert (tmp_path / "tmp" / "transferlab-mode").read_text().strip() == "worker"
        deadline = time.monotonic() + 60
        while subprocess.run([str(HEALTHCHECK)], cwd=ROOT, env=env, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "the worker never reported healthy"
            time.sleep(1)
        assert worker in {c.pid for c in psutil.Process(proc.pid).children()} and is_worker_process(worker)
        assert not (state / "demo-data").exists()
        family = {proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        assert not [p for p in family if pid_alive(p)]
        assert subprocess.run([str(HEALTHCHECK)], cwd=ROOT, env=env, capture_output=True).returncode == 1  # stopped
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_entrypoint_dashboard_serves_the_pages_only(tmp_path):
    state, port = tmp_path / "state", _free_port()
    state.mkdir()
    proc = subprocess.Popen(
        [str(ENTRYPOINT), "dashboard"],
        cwd=ROOT,
        env=_env(state, port),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_healthy(proc, port)
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert b"TL_NO_WORKER=1" in environ and "streamlit" in psutil.Process(proc.pid).cmdline()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_entrypoint_refuses_an_unknown_command(tmp_path):
    r = subprocess.run(
        [str(ENTRYPOINT), "train"],
        cwd=ROOT,
        env=_env(tmp_path, _free_port()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "unknown command 'train'" in r.stderr and "worker" in r.stderr


def test_entrypoint_refuses_an_unwritable_state_folder(tmp_path):
    state = tmp_path / "ro"
    state.mkdir()
    state.chmod(0o500)
    try:
        if os.access(state, os.W_OK):  # root ignores permissions: point at a file instead
            state.chmod(0o700)
            state = tmp_path / "a-file"
            state.write_text("")
        r = subprocess.run(
            [str(ENTRYPOINT)], cwd=ROOT, env=_env(state, _free_port()), capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 2 and "mount a writable folder" in r.stderr
    finally:
        if state.is_dir():
            state.chmod(0o700)


def test_entrypoint_refuses_the_network_without_a_password(tmp_path):
    env = _env(tmp_path, _free_port())
    env.update(TL_HOST="0.0.0.0")
    env.pop("TL_PASSWORD", None)
    r = subprocess.run([str(ENTRYPOINT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "TL_PASSWORD" in r.stderr
    assert not (tmp_path / "demo-data").exists()  # refused before doing anything


def test_entrypoint_lets_the_identity_providers_sign_in_stand_for_the_password(tmp_path):
    home = tmp_path / "home"
    (home / ".streamlit").mkdir(parents=True)
    (home / ".streamlit" / "secrets.toml").write_text('[auth]\nredirect_uri = "https://tl.example/oauth2callback"\n')
    state = tmp_path / "a-file"  # past the sign-in check, the next one stops it before serving
    state.write_text("")
    env = _env(state, _free_port())
    env.update(TL_HOST="0.0.0.0", HOME=str(home))
    env.pop("TL_PASSWORD", None)
    r = subprocess.run([str(ENTRYPOINT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "mount a writable folder" in r.stderr and "TL_PASSWORD" not in r.stderr


def test_the_compose_file_starts_postgres_the_dashboard_and_a_gpu_worker_on_one_database():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "dashboard", "worker"}
    db = services["postgres"]["environment"]
    for name in ("dashboard", "worker"):
        service = services[name]
        assert service["command"] == [name]  # a mode of the entrypoint (tested above)
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        url = service["environment"]["DATABASE_URL"]
        assert url.startswith(f"postgresql+psycopg://{db['POSTGRES_USER']}:") and url.endswith(
            f"@postgres:5432/{db['POSTGRES_DB']}"
        )
        assert any(v.endswith(":/state") for v in service["volumes"])  # checkpoints where both see them
    assert services["worker"]["restart"] == "unless-stopped"
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "8501:8501" in services["dashboard"]["ports"]


def _bytes(size: str) -> int:
    """A compose byte value ("8gb", "512m")."""
    number, unit = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(size).lower()).groups()
    return int(number) * 1024 ** " kmg".index(unit or " ")


def test_the_compose_file_gives_shared_memory_a_worker_health_check_and_a_private_database():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    # Every service that trains or measures (the worker; the pages' measurements) gets more than
    # Docker's 64 MB of /dev/shm for its DataLoader workers (tl_core/data/shared_memory.py).
    for name in ("dashboard", "worker"):
        assert _bytes(services[name]["shm_size"]) >= 2 * 1024**3, name
    # The worker's health: its heartbeat in the store (worker --health), not the dashboard's page.
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "python", "-m", "tl_core", "worker", "--health"]
    assert "disable" not in services["worker"]["healthcheck"]
    # PostgreSQL: no default password anywhere, and published on this host's loopback unless told otherwise.
    db = services["postgres"]
    assert db["environment"]["POSTGRES_PASSWORD"].startswith("${TL_DB_PASSWORD:?")
    for name in ("dashboard", "worker"):
        url = services[name]["environment"]["DATABASE_URL"]
        assert ":${TL_DB_PASSWORD:?" in url and "${TL_DB_PASSWORD:-" not in url
    assert db["ports"] and all(p.startswith("${TL_DB_BIND:-127.0.0.1}:") for p in db["ports"]), db["ports"]
    text = (ROOT / "docker-compose.yml").read_text()
    assert "TL_DB_PASSWORD=" in text and "TL_DB_BIND" in text.split("x-transferlab")[0]  # how to start it, open it


def test_dockerfile_runs_the_entrypoint_under_tini_as_a_non_root_user_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "HEALTHCHECK" in text and 'CMD ["/app/docker/healthcheck.sh"]' in text and os.access(HEALTHCHECK, os.X_OK)
    assert "/_stcore/health" in HEALTHCHECK.read_text() and "worker --health" in HEALTHCHECK.read_text()
    # tini as PID 1: it reaps orphans and hands docker stop's SIGTERM to the service.
    assert re.search(r"apt-get install -y --no-install-recommends tini\b", text)
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "/app/docker/entrypoint.sh"]' in text and os.access(ENTRYPOINT, os.X_OK)
    assert "pip install -r requirements.txt" in text and "--no-deps animal-mnist==0.4" in text
    # `docker build .` builds on python:3.11-slim; check-image.sh passes a local base as BASE.
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M) and re.search(r"^FROM \$\{BASE\}$", text, re.M)


def test_the_health_check_asks_the_dashboard_or_a_worker_containers_worker(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    env = _env(state, _free_port())
    db = Store(f"sqlite:///{state / 'experiments.db'}")
    (tmp_path / "tmp" / "transferlab-mode").write_text("serve\n")
    assert subprocess.run([str(HEALTHCHECK)], env=env, capture_output=True).returncode != 0  # no dashboard there
    (tmp_path / "tmp" / "transferlab-mode").write_text("worker\n")
    assert subprocess.run([str(HEALTHCHECK)], env=env, capture_output=True).returncode == 1  # no worker yet
    db.register_worker(socket.gethostname(), os.getpid())  # heartbeating now, on this host
    r = subprocess.run([str(HEALTHCHECK)], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("healthy"), r.stdout + r.stderr


def test_the_readme_gives_shared_memory_and_names_the_driver_torchs_cuda_needs():
    readme = (ROOT / "README.md").read_text()
    runs = [line for line in readme.splitlines() if re.match(r"^\s*docker run\b", line)]
    assert runs and all("--shm-size" in line or "--ipc=host" in line for line in runs), runs
    # torch 2.14.1's wheels are CUDA 13.0 builds (requirements.txt): NVIDIA's driver 580 or newer.
    assert "CUDA 13.0" in readme and re.search(r"driver\W+(?:\w+\W+){0,4}580", readme)


def test_requirements_are_all_pinned_with_the_full_build_torch_pair():
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            assert not line or "==" in line, f"{name}: {line!r} is not pinned"
    reqs = (ROOT / "requirements.txt").read_text()
    assert "torch==2.14.1" in reqs and "torchvision==0.29.2" in reqs


def test_the_service_as_pid_1_reaps_orphaned_zombies_without_tini(tmp_path):
    """Without --init the supervisor is PID 1: an orphan re-parented to it and exited is reaped
    (psutil lists its children), while the processes it waits for itself are left to Popen."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a PID namespace")
    script = tmp_path / "pid1.py"
    script.write_text(
        textwrap.dedent("""
        import os, subprocess, sys, time
        import psutil
        from tl_core.executors.supervisor import _reap_orphans
        assert os.getpid() == 1, os.getpid()
        # a grandchild orphaned to PID 1: its parent exits at once, it exits after 0.2 s
        subprocess.run([sys.executable, "-c", "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
                        "'import time; time.sleep(0.2)'])"], check=True)
        ours = subprocess.Popen([sys.executable, "-c", "pass"])
        time.sleep(1.5)
        zombies = lambda: sorted(c.pid for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE)
        before = zombies()
        _reap_orphans({ours.pid})
        print(len(before), zombies() == [ours.pid])
    """)
    )
    out = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script.read_text()],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    if out.returncode and "unshare failed" in out.stderr:
        pytest.skip(f"no PID namespace here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "True"]  # the orphan and ours were zombies; only ours is left
