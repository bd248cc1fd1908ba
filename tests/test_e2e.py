"""End to end in a real browser: launch a grid from New run, watch it train, see a run's layer
drift, compare it; predict with a trained run on an image uploaded through the browser.

The grid is 2 strategies x 2 train fractions, one seed (4 runs: a pair of strategies at each
fraction is what the statistics and the data-efficiency chart need); the form's third axis, seeds,
multiplying the other two is checked without a browser (test_app.py's grid test).

Starts `streamlit run app.py` on a free port with its own database, runs folder and data root;
the app starts the real worker, which trains both runs on the CPU. Drives Debian's chromium
(never a downloaded browser) with Playwright and leaves a screenshot of every page in
artifacts/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tl_core.data.demo import write_demo_data
from tl_core.executors.processes import pidfile as worker_pidfile
from tl_core.store import Store

from .helpers import free_port, start_dashboard

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
TRAIN_TIMEOUT_S = 360
# One browser test at a time (each runs a dashboard, its worker, training and chromium): under
# `make test`'s two processes, the other process runs the rest of the suite beside it.
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.xdist_group("browser")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _stop(pid: int) -> None:
    """SIGTERM, then SIGKILL after 10 s; returns once the process is gone."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)


@pytest.fixture()
def app_server(tmp_path, monkeypatch):
    """The dashboard on a free port with its own state; yields (base URL, database URL, runs dir)."""
    write_demo_data(tmp_path / "data", datasets=("animals",), per_class=12, size=48)
    db_url = f"sqlite:///{tmp_path / 'e2e.db'}"
    runs = tmp_path / "runs"
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "TL_DATA_ROOTS": str(tmp_path / "data"),
        "TL_RUNS_DIR": str(runs),
        "TL_MAX_CONCURRENT": "1",
    }
    env.pop("TL_NO_WORKER", None)
    monkeypatch.setenv("TL_RUNS_DIR", str(runs))  # where this test looks for the worker's files
    proc = start_dashboard(env, port, tmp_path / "streamlit.log")
    base = f"http://127.0.0.1:{port}"
    try:
        yield base, db_url, runs
    finally:
        _stop(proc.pid)
        # The app started a detached worker (its own session); stop it, and so its training runs.
        pidfile = worker_pidfile(Store(db_url))
        if pidfile.exists():
            worker = int(pidfile.read_text().strip())
            _stop(worker)
            assert not _alive(worker), "the worker outlived the test"
        for run in Store(db_url).list_runs():
            assert not (run.pid and _alive(run.pid)), f"run {run.id}'s process outlived the test"


def _browser(p):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(
            "Debian's chromium is not installed: run `apt-get install chromium` "
            "(the end-to-end test never downloads a browser)"
        )
    return p.chromium.launch(
        executable_path=chromium,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


def _page(browser):
    """A page the size of a laptop screen that waits as a person would on a loaded machine."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    return page


def _settle(page, timeout_ms: int = 90_000) -> None:
    """Wait until the script has finished running (Streamlit's status widget has gone)."""
    page.wait_for_timeout(800)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout_ms)
    page.wait_for_timeout(500)


def _screenshot(page, name: str) -> None:
    """The whole page: Streamlit scrolls inside <main>, so grow the viewport to its height first."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": min(max(height + 40, 900), 8000)})
    page.wait_for_timeout(1500)  # plotly re-lays out its charts on resize
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


def _metric_value(page, label: str) -> str:
    metric = page.locator('[data-testid="stMetric"]').filter(
        has=page.locator('[data-testid="stMetricLabel"]', has_text=re.compile(rf"^{label}$"))
    )
    return metric.locator('[data-testid="stMetricValue"]').inner_text().strip()


def test_launch_a_grid_watch_it_train_and_compare_it(app_server):
    from playwright.sync_api import expect, sync_playwright

    base, db_url, _ = app_server
    expect.set_options(timeout=60_000)  # wait as a person would on a loaded machine, not Playwright's 5 s
    with sync_playwright() as p:
        browser = _browser(p)
        page = _page(browser)

        # 1. New run: the demo dataset is the only folder under the root, so it is chosen.
        page.goto(base)
        _settle(page)
        expect(page.get_by_role("heading", name="New run")).to_be_visible()
        expect(page.get_by_role("combobox", name="Dataset folder")).to_have_value(re.compile(r"^animals"))
        assert _metric_value(page, "Classes") == "10"
        page.locator('[data-testid="stCheckbox"]').filter(has_text=re.compile(r"^partial$")).click()
        _settle(page)
        expect(
            page.get_by_role("spinbutton", name="Groups to unfreeze (partial)")
        ).to_be_visible()  # partial's knob appears
        # A grid: 2 strategies x 2 train fractions, its count shown before launching.
        for label, value in (("Epochs", "2"), ("Image size (px)", "48")):
            page.get_by_role("spinbutton", name=label).fill(value)
            page.get_by_role("spinbutton", name=label).press("Enter")
            _settle(page)
        page.get_by_role("textbox", name="Train fractions").fill("0.5, 1")
        page.get_by_role("textbox", name="Train fractions").press("Enter")
        page.get_by_role("textbox", name="Experiment name").fill("e2e-grid")
        page.get_by_role("textbox", name="Experiment name").press("Enter")
        _settle(page)
        expect(page.get_by_text(re.compile(r"Will queue 4 run\(s\)"))).to_be_visible()
        page.get_by_role("button", name="Launch").click()
        _settle(page)
        expect(page.get_by_text("Queued 4 run(s)")).to_be_visible()
        _screenshot(page, "1-new-run")

        runs = Store(db_url).list_runs(experiment="e2e-grid")
        assert sorted((r.config["strategy"], r.config["train_fraction"], r.config["seed"]) for r in runs) == sorted(
            (s, f, 0) for s in ("feature_extraction", "partial") for f in (0.5, 1.0)
        )
        assert {r.config["epochs"] for r in runs} == {2} and {r.config["image_size"] for r in runs} == {48}

        # 2. Runs: the live table (a fragment) shows both runs completed without a reload.
        page.get_by_role("link", name="Watch them on Runs").click()
        _settle(page)
        deadline = time.time() + TRAIN_TIMEOUT_S
        while _metric_value(page, "Completed") != "4":
            failed = [r for r in Store(db_url).list_runs() if r.status in ("failed", "cancelled")]
            assert not failed, f"run {failed[0].id} {failed[0].status}: {failed[0].error}"
            assert time.time() < deadline, f"runs not completed in {TRAIN_TIMEOUT_S} s"
            page.wait_for_timeout(1000)
        page.wait_for_timeout(2500)  # one more refresh so the table shows the final rows
        _screenshot(page, "2-runs")

        # 3. Run detail of the newest run, through the Runs page's action (a switch from inside the fragment).
        newest = max(runs, key=lambda r: r.id)
        page.get_by_role("button", name="Open details").click()
        _settle(page)
        expect(page.get_by_role("heading", name="Run detail")).to_be_visible()
        assert f"run={newest.id}" in page.url
        expect(page.get_by_role("button", name=re.compile("Download best checkpoint"))).to_be_visible()
        # Its layer drift: a line per group; partial kept the lower groups frozen, drawn at 0 and named so.
        groups = Store(db_url).get_run(newest.id).summary["groups"]
        last = Store(db_url).epoch_metrics([newest.id])[newest.id][1]
        assert [g for g in groups if f"drift/{g}" in last] == groups, sorted(last)
        frozen = [g for g in groups if last[f"drift/{g}"] == 0.0]
        assert frozen and "head" not in frozen and groups[0] in frozen, last  # partial trains the top groups only
        drift = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="Layer drift")
        expect(drift).to_have_count(1)
        drift.scroll_into_view_if_needed()
        expect(drift.locator(".legendtext")).to_have_count(len(groups))
        for g in frozen:
            expect(drift.locator(".legendtext", has_text=f"{g} (frozen: 0)")).to_have_count(1)
        expect(drift.locator(".legendtext", has_text=re.compile(r"^head$"))).to_have_count(1)
        _screenshot(page, "3-run-detail")

        # 4. Compare, from the sidebar: the newest experiment opens with one legend entry per run.
        page.get_by_role("link", name="Compare").click()
        _settle(page)
        expect(page.get_by_role("combobox", name="Experiment")).to_have_value("e2e-grid")
        chart = page.locator('[data-testid="stPlotlyChart"]').first
        for run in runs:
            expect(chart.locator(".legendtext", has_text=run.name)).to_have_count(1)
        expect(page.get_by_role("heading", name="Per class", exact=True)).to_be_visible()
        # What fine-tuning changed: each run's drift per layer group, stem to head.
        overlay = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="layer drift at the best epoch")
        expect(overlay).to_have_count(1)
        for run in runs:
            expect(overlay.locator(".legendtext", has_text=run.name)).to_have_count(1)
        # Knowledge kept against val accuracy: every run started from ImageNet's weights, so each measured it.
        kept = {r.name: r.summary.get("forgetting") for r in Store(db_url).list_runs(experiment="e2e-grid")}
        assert all(k and k.get("agreement") is not None for k in kept.values()), kept
        scatter = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="forgetting: knowledge kept")
        expect(scatter).to_have_count(1)
        for strategy in ("feature_extraction", "partial"):
            expect(scatter.locator(".legendtext", has_text=strategy)).to_have_count(1)
        _screenshot(page, "4-compare")
        # The statistics of each pair of strategies, at each train fraction, in plain words.
        expect(page.get_by_role("heading", name="Is the difference real?")).to_be_visible()
        verdicts = page.get_by_text(
            re.compile(
                r"beats .* by .* points|within noise|add seeds to tell|too few to tell"
                r"|no difference seen"
            )
        )
        expect(verdicts.first).to_be_visible()
        assert verdicts.count() == 2, [verdicts.nth(i).inner_text() for i in range(verdicts.count())]
        verdicts.first.scroll_into_view_if_needed()
        page.wait_for_timeout(800)
        page.screenshot(path=str(SHOTS / "5-statistics.png"))
        # The data-efficiency chart: accuracy against training images per class, one line per strategy.
        expect(page.get_by_role("heading", name="How much data do I need?")).to_be_visible()
        efficiency = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="how much data")
        expect(efficiency).to_have_count(1)
        for strategy in ("feature_extraction", "partial"):
            expect(efficiency.locator(".legendtext", has_text=strategy)).to_have_count(1)
        efficiency.scroll_into_view_if_needed()
        page.wait_for_timeout(800)
        page.screenshot(path=str(SHOTS / "6-data-efficiency.png"))
        browser.close()


def test_predict_an_uploaded_image_in_the_browser(app_server, tmp_path):
    """A trained run's checkpoint on an image uploaded through the browser's file input: the job
    runs in its own process and the page shows the top class when it is done."""
    from playwright.sync_api import expect, sync_playwright

    from tl_core import service

    base, db_url, _ = app_server
    # Trained by the command line (a process that ends with its run), into the dashboard's database.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tl_core",
            "run",
            "--data",
            str(tmp_path / "data" / "animals"),
            "--strategy",
            "feature_extraction",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--experiment",
            "e2e-predict",
            "--no-progress",
            "--db",
            db_url,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=180,
    )
    store = Store(db_url)
    (run_id,) = [r.id for r in store.list_runs(experiment="e2e-predict")]
    image = store.predictions(run_id)[0].path
    top = service.predict_images(store, run_id, [image], top_k=3)["results"][0]["top"][0]
    expect.set_options(timeout=60_000)
    with sync_playwright() as p:
        browser = _browser(p)
        page = _page(browser)
        page.goto(base)
        _settle(page)
        page.get_by_role("link", name="Predict", exact=True).click()
        _settle(page)
        expect(page.get_by_role("heading", name="Predict", exact=True)).to_be_visible()
        expect(page.get_by_role("combobox", name="Run", exact=True)).to_have_value(re.compile(rf"^#{run_id} "))
        page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(image)
        _settle(page)
        expect(page.get_by_text("1 image(s) chosen")).to_be_visible()
        page.get_by_role("button", name="Predict", exact=True).click()
        # The job's process loads the checkpoint and computes the heat maps; the page checks every second.
        name = Path(image).name  # the file's own name, as uploaded
        expect(
            page.get_by_text(re.compile(rf"{re.escape(name)}: {re.escape(top['class'])} \({top['prob']:.1%}\)"))
        ).to_be_visible(timeout=90_000)
        _settle(page)
        expect(page.get_by_text("what the model sees")).to_be_visible()
        page.mouse.move(0, 0)  # no tooltip over the screenshot
        _screenshot(page, "7-predict")
        browser.close()
