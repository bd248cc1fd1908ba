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


def test_entrypoint_serves_the_dashboard_with_state_under_tl_state(tmp_path):
    state, port = tmp_path / "state", _free_port()
    state.mkdir()
    proc = subprocess.Popen([str(ENTRYPOINT)], cwd=ROOT, env=_env(state, port), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, healthy = time.monotonic() + 120, False
        while time.monotonic() < deadline and not healthy:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                healthy = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200
            except OSError:
                time.sleep(0.5)
        assert healthy, "the dashboard never answered its health check"
        assert len(list((state / "demo-data" / "animals").iterdir())) == 10
        assert (state / "runs").is_dir() and (state / "torch").is_dir()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


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
