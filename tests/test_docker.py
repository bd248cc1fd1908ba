"""What the Docker image relies on, tested without a Docker engine: the entrypoint script run
directly, and the Dockerfile's promises (pinned CUDA torch, non-root, healthcheck)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import yaml

from tl_core.store import Store
from tl_core.worker import is_worker_process, pid_alive

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(state: Path, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TL_RUNS_DIR", "TORCH_HOME", "TL_DATA_ROOTS")}
    env.update(TL_STATE=str(state), TL_HOST="127.0.0.1", TL_PORT=str(port), TL_DEMO_PER_CLASS="3",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    return env


def test_entrypoint_serves_the_dashboard_and_its_worker_with_state_under_tl_state(tmp_path):
    state, port = tmp_path / "state", _free_port()
    state.mkdir()
    env = {**_env(state, port), "TL_STANDBY": "0"}
    proc = subprocess.Popen([str(ENTRYPOINT)], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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
    proc = subprocess.Popen([str(ENTRYPOINT), "worker"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        store = Store(f"sqlite:///{state / 'experiments.db'}")
        pid_file = state / "runs" / "workers" / store.instance_id / "worker.pid"
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.3)
        worker = int(pid_file.read_text())
        assert psutil.Process(proc.pid).cmdline()[-2:] == ["serve", "--no-dashboard"]
        assert worker in {c.pid for c in psutil.Process(proc.pid).children()} and is_worker_process(worker)
        assert not (state / "demo-data").exists()
        family = {proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        assert not [p for p in family if pid_alive(p)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_entrypoint_dashboard_serves_the_pages_only(tmp_path):
    state, port = tmp_path / "state", _free_port()
    state.mkdir()
    proc = subprocess.Popen([str(ENTRYPOINT), "dashboard"], cwd=ROOT, env=_env(state, port), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(proc, port)
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert b"TL_NO_WORKER=1" in environ and "streamlit" in psutil.Process(proc.pid).cmdline()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_entrypoint_refuses_an_unknown_command(tmp_path):
    r = subprocess.run([str(ENTRYPOINT), "train"], cwd=ROOT, env=_env(tmp_path, _free_port()), capture_output=True,
                       text=True, timeout=60)
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
        r = subprocess.run([str(ENTRYPOINT)], cwd=ROOT, env=_env(state, _free_port()), capture_output=True,
                           text=True, timeout=60)
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
            f"@postgres:5432/{db['POSTGRES_DB']}")
        assert any(v.endswith(":/state") for v in service["volumes"])  # checkpoints where both see them
    assert services["worker"]["healthcheck"] == {"disable": True} and services["worker"]["restart"] == "unless-stopped"
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "8501:8501" in services["dashboard"]["ports"]


def test_dockerfile_runs_the_entrypoint_as_a_non_root_user_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "HEALTHCHECK" in text and "/_stcore/health" in text
    assert 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in text and os.access(ENTRYPOINT, os.X_OK)
    assert "pip install -r requirements.txt" in text and "--no-deps animal-mnist==0.4" in text


def test_requirements_are_all_pinned_with_the_full_build_torch_pair():
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            assert not line or "==" in line, f"{name}: {line!r} is not pinned"
    reqs = (ROOT / "requirements.txt").read_text()
    assert "torch==2.14.1" in reqs and "torchvision==0.29.2" in reqs
