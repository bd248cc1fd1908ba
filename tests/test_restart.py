"""Restarting the Streamlit server does not touch training: the worker is its own process."""

from __future__ import annotations

import os
import signal

import pytest

from tl_core.config import make_config
from tl_core.data.demo import write_demo_data
from tl_core.executors.processes import pid_alive, pidfile
from tl_core.store import Store

from .helpers import free_port, start_dashboard
from .test_e2e import _browser, _metric_value, _settle, _stop
from .test_worker import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.xdist_group("browser")]  # as test_e2e's


def test_runs_keep_training_through_a_dashboard_restart_and_show_live_after(tmp_path, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    write_demo_data(tmp_path / "data", datasets=("animals",), per_class=12, size=32)
    db_url, runs = f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "runs"
    env = {**os.environ, "DATABASE_URL": db_url, "TL_DATA_ROOTS": str(tmp_path / "data"), "TL_RUNS_DIR": str(runs)}
    env.pop("TL_NO_WORKER", None)
    monkeypatch.setenv("TL_RUNS_DIR", str(runs))  # where this test looks for the worker's files
    store = Store(db_url)
    pid_path = pidfile(store)  # this database's worker's pid file
    cfg = make_config(data=str(tmp_path / "data" / "animals"), epochs=500, image_size=32, batch_size=8, workers=0)
    run_id = store.create_run(cfg.model_dump(), "restart", status="queued").id
    servers = []
    try:
        with sync_playwright() as p:
            browser = _browser(p)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            # 1. The first server's first session starts the worker, which takes the queued run.
            port = free_port()
            servers.append(start_dashboard(env, port, tmp_path / "first.log"))
            page.goto(f"http://127.0.0.1:{port}")
            _settle(page)
            worker = wait_for(
                lambda: pid_path.exists() and int(pid_path.read_text()), 30, "the dashboard to start a worker"
            )
            wait_for(lambda: store.get_run(run_id).epochs_done >= 1, 120, "the run to train")
            # 2. The server dies hard; the worker and the run's process carry on.
            os.kill(servers[0].pid, signal.SIGKILL)
            servers[0].wait()
            before = store.get_run(run_id).epochs_done
            wait_for(lambda: store.get_run(run_id).epochs_done >= before + 2, 60, "training to go on")
            assert pid_alive(worker) and store.get_run(run_id).status == "running"
            # 3. A new server shows the same run live, and finds the worker instead of starting one.
            port = free_port()
            servers.append(start_dashboard(env, port, tmp_path / "second.log"))
            page.goto(f"http://127.0.0.1:{port}")
            _settle(page)
            page.get_by_role("link", name="Runs").click()
            _settle(page)
            expect(page.get_by_role("heading", name="Runs")).to_be_visible(timeout=60_000)
            expect(page.get_by_text(f"pid {worker}")).to_be_visible(timeout=60_000)
            assert _metric_value(page, "Running") == "1"
            # Live: cancelled from elsewhere, the open page shows it without a reload.
            store.request_cancel(run_id)
            wait_for(lambda: store.get_run(run_id).status == "cancelled", 30, "the run to stop")
            wait_for(lambda: _metric_value(page, "Cancelled") == "1", 30, "the page to refresh by itself")
            assert int(pid_path.read_text()) == worker
            browser.close()
    finally:
        for server in servers:
            _stop(server.pid)
        if pid_path.exists():
            _stop(int(pid_path.read_text()))
        wait_for(lambda: not pid_alive(store.get_run(run_id).pid), 15, "the run to stop with its worker")
