"""The MLflow UI as a person sees it, in a real browser (Debian's Chromium driven by
playwright; nothing downloaded): ``mlflow server --app-name sweep`` on a free port over
a real tiny sweep, opened the way a user does: the experiments list, then the
experiment's link. Screenshots go to ``$SWEEP_SCREENSHOTS`` (the README's are made with
``SWEEP_SCREENSHOTS=docs``), else to the test's temporary folder."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from conftest import ROOT

PARAMS = ["lora.rank", "lora.alpha", "optimizer.lr", "train.grad_accumulation"]
TIMEOUT = 60_000  # ms: a cold MLflow page on 2 busy cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_sweep):
    tmp, _, _ = tiny_sweep
    port = _free_port()
    log = (tmp / "mlflow-server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "sweep",
         "--backend-store-uri", f"sqlite:///{tmp}/m.db", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("mlflow server did not start:\n" +
                                     (tmp / "mlflow-server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            if process.poll() is not None:
                break
            os.killpg(process.pid, sig)
            try:
                process.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Chromium is not installed: `make setup` installs Debian's `chromium` "
                    "(apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SWEEP_SCREENSHOTS") or tmp_path)
    folder = folder if folder.is_absolute() else ROOT / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _page(browser):
    page = browser.new_page(viewport={"width": 1600, "height": 900})
    page.set_default_timeout(TIMEOUT)
    return page


def _close_assistant(page) -> None:
    """MLflow's assistant panel opens by itself on a first visit; a user closes it."""
    close = page.locator("button[aria-label='Close']")
    if close.count():
        close.first.click()


def _shoot(page, path: Path) -> None:
    page.wait_for_timeout(800)  # let charts finish their transition
    page.screenshot(path=str(path))
    assert path.stat().st_size > 20_000  # a rendered page, not a blank one


@pytest.mark.slow
def test_experiment_opens_on_its_runs_with_trials_nested(server, browser, shots) -> None:
    page = _page(browser)
    page.goto(f"{server}/#/experiments")
    link = page.get_by_role("link", name="sweep", exact=True).first
    link.wait_for()
    _shoot(page, shots / "mlflow-experiments.png")
    link.click()
    page.get_by_text(re.compile(r"\d+ matching runs")).wait_for()
    assert page.get_by_role("heading", name="Runs").is_visible()
    assert not page.get_by_text("Traces", exact=True).filter(
        has=page.locator("h1, h2, h3")).count()  # not MLflow's GenAI overview
    _close_assistant(page)
    page.locator("button[data-component-id*='runnamecellrenderer']").first.click()  # expand
    for trial in ("trial-0", "trial-1"):
        page.get_by_role("link", name=trial, exact=True).wait_for()
    page.get_by_role("button", name="Columns", exact=True).click()
    chooser = page.get_by_role("dialog")
    search = chooser.get_by_placeholder("Search columns")
    for name in ["Dataset", "Source", *PARAMS, "val_loss"]:  # off, then on
        search.fill(name)
        chooser.locator(".du-bois-light-tree-title").filter(
            has_text=re.compile(rf"^\s*{re.escape(name)}\s*$")).click()
    page.keyboard.press("Escape")
    headers = {t.strip() for t in page.locator("[role=columnheader]").all_inner_texts()}
    for name in [*PARAMS, "val_loss"]:
        assert name in headers, f"{name} is not a column of the runs table: {sorted(headers)}"
    assert "Dataset" not in headers and "Models" in headers
    _shoot(page, shots / "mlflow-runs.png")
    page.close()


@pytest.mark.slow
def test_best_trial_charts_val_loss_and_opens_its_evaluation_table(server, browser, shots,
                                                                  tiny_sweep) -> None:
    tmp, _, _ = tiny_sweep
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp}/o.db")
    run_id = study.best_trial.user_attrs["mlflow_run_id"]
    page = _page(browser)
    page.goto(f"{server}/#/experiments")
    page.get_by_role("link", name="sweep", exact=True).first.click()
    page.get_by_text(re.compile(r"\d+ matching runs")).wait_for()
    _close_assistant(page)
    page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
    page.get_by_role("link", name=f"trial-{study.best_trial.number}", exact=True).click()
    page.get_by_role("tab", name=re.compile("Model metrics")).click()
    page.get_by_placeholder("Search metric charts").fill("val_loss")
    page.get_by_text("val_loss", exact=True).first.wait_for()  # the chart's title
    page.locator(".js-plotly-plot .scatterlayer .trace").first.wait_for()  # a drawn line
    _shoot(page, shots / "mlflow-val-loss.png")
    page.get_by_role("tab", name=re.compile("Artifacts")).click()
    page.get_by_text("eval", exact=True).first.click()
    page.get_by_text(re.compile(r"answers-.*\.json")).first.click()
    page.get_by_role("columnheader", name="question").first.wait_for()
    page.get_by_role("cell", name=re.compile("What does Article")).first.wait_for()
    _shoot(page, shots / "mlflow-eval-table.png")
    assert run_id in page.content() or run_id[:8] in page.content()
    page.close()


@pytest.mark.slow
def test_registered_model_shows_its_alias(server, browser, shots) -> None:
    page = _page(browser)
    page.goto(f"{server}/#/models")
    row = page.get_by_role("row").filter(has_text="sweep-s")
    row.first.wait_for()
    dialog_close = page.locator("[role=dialog] button[aria-label='Close']")
    if dialog_close.count():
        dialog_close.first.click()
    _close_assistant(page)
    assert re.search(r"best\s*:\s*Version \d+", row.first.inner_text())
    _shoot(page, shots / "mlflow-registered-model.png")
    page.close()
