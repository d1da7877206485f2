"""The MLflow UI as a person sees it, in a real browser (Debian's Chromium driven by
playwright; nothing downloaded): ``mlflow server --app-name sweep`` on a free port over
a real tiny sweep, opened the way a user does: the experiments list, then the
experiment's link. Screenshots go to the test's temporary folder.

The same flows make the screenshots in docs/ (docs/tracking.md) of a real sweep::

    .venv/bin/python tests/shipping/test_mlflow_ui.py mlruns/mlflow.db docs
"""

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
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

PARAMS = ["lora.rank", "lora.alpha", "optimizer.lr", "train.grad_accumulation"]
TIMEOUT = 60_000  # ms: a cold MLflow page on 2 busy cores


@contextmanager
def mlflow_server(database: Path, log_file: Path) -> Iterator[str]:
    """``mlflow server --app-name sweep`` over a SQLite store on a free port of
    127.0.0.1; stopped (its whole process group) whatever happens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = log_file.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "sweep",
         "--backend-store-uri", f"sqlite:///{database.resolve()}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=database.parent, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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
                                     log_file.read_text()[-3000:])
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


@contextmanager
def chromium_browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise RuntimeError("Chromium is not installed: `make test` installs Debian's "
                           "`chromium` (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


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


def _open_experiment(page, url: str, experiment: str, shots: Path) -> None:
    """The experiments list, then the experiment's link, as a user clicks it."""
    page.goto(f"{url}/#/experiments")
    link = page.get_by_role("link", name=experiment, exact=True).first
    link.wait_for()
    _close_assistant(page)
    _shoot(page, shots / "mlflow-experiments.png")
    link.click()
    page.get_by_text(re.compile(r"\d+ matching runs")).wait_for()
    _close_assistant(page)
    page.locator("button[data-component-id*='runnamecellrenderer']").first.click()  # expand


def runs_flow(browser, url: str, experiment: str, trials, shots: Path) -> set:
    """The runs table: the study's trials nested, the searched params and val_loss as
    columns; returns the column headers."""
    page = _page(browser)
    _open_experiment(page, url, experiment, shots)
    assert page.get_by_role("heading", name="Runs").is_visible()  # not the GenAI overview
    for trial in trials:
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
    _shoot(page, shots / "mlflow-runs.png")
    page.close()
    return headers


def trial_flow(browser, url: str, experiment: str, trial: str, shots: Path) -> None:
    """A trial's val_loss chart, then its evaluation table."""
    page = _page(browser)
    _open_experiment(page, url, experiment, shots)
    page.get_by_role("link", name=trial, exact=True).click()
    page.get_by_role("tab", name=re.compile("Model metrics")).click()
    page.get_by_placeholder("Search metric charts").fill("val_loss")
    page.get_by_text("val_loss", exact=True).first.wait_for()  # the chart's title
    page.locator(".js-plotly-plot .scatterlayer .trace").first.wait_for()  # a drawn line
    _shoot(page, shots / "mlflow-val-loss.png")
    page.get_by_role("tab", name=re.compile("Artifacts")).click()
    page.get_by_text("eval", exact=True).first.click()
    page.get_by_text(re.compile(r"answers-.*\.json")).first.click()
    page.get_by_role("columnheader", name="question").first.wait_for()
    page.get_by_role("cell", name=re.compile(r"\?")).first.wait_for()  # a question
    _shoot(page, shots / "mlflow-eval-table.png")
    page.close()


def registry_flow(browser, url: str, model: str, shots: Path) -> str:
    """The registered models list; returns the model's row."""
    page = _page(browser)
    page.goto(f"{url}/#/models")
    row = page.get_by_role("row").filter(has_text=model).first
    row.wait_for()
    dialog_close = page.locator("[role=dialog] button[aria-label='Close']")
    if dialog_close.count():
        dialog_close.first.click()
    _close_assistant(page)
    text = row.inner_text()
    _shoot(page, shots / "mlflow-registered-model.png")
    page.close()
    return text


@pytest.fixture(scope="module")
def server(tiny_sweep):
    tmp, _, _ = tiny_sweep
    with mlflow_server(tmp / "m.db", tmp / "mlflow-server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    try:
        with chromium_browser() as browser:
            yield browser
    except RuntimeError as error:
        pytest.fail(str(error))


@pytest.mark.slow
def test_experiment_opens_on_its_runs_with_trials_nested(server, browser, tmp_path) -> None:
    headers = runs_flow(browser, server, "sweep", ["trial-0", "trial-1"], tmp_path)
    for name in [*PARAMS, "val_loss"]:
        assert name in headers, f"{name} is not a column of the runs table: {sorted(headers)}"
    assert "Dataset" not in headers and "Models" in headers
    assert (tmp_path / "mlflow-experiments.png").is_file()


@pytest.mark.slow
def test_best_trial_charts_val_loss_and_opens_its_evaluation_table(server, browser, tmp_path,
                                                                  tiny_sweep) -> None:
    import optuna

    tmp, _, _ = tiny_sweep
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp}/o.db")
    trial_flow(browser, server, "sweep", f"trial-{study.best_trial.number}", tmp_path)
    assert (tmp_path / "mlflow-eval-table.png").is_file()


@pytest.mark.slow
def test_registered_model_shows_its_alias(server, browser, tmp_path) -> None:
    row = registry_flow(browser, server, "sweep-s", tmp_path)
    assert re.search(r"best\s*:\s*Version \d+", row), row


def main(database: str, out: str, experiment: str = "sweep") -> None:
    """Screenshots of a real store: its first registered model's best version and trial."""
    from mlflow.tracking import MlflowClient

    db, shots = Path(database), Path(out)
    shots.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(f"sqlite:///{db.resolve()}")
    model = client.search_registered_models()[0].name
    best = client.get_run(client.get_model_version_by_alias(model, "best").run_id)
    trials = [best.info.run_name]
    with mlflow_server(db, shots / ".mlflow-server.log") as url, chromium_browser() as browser:
        runs_flow(browser, url, experiment, trials, shots)
        trial_flow(browser, url, experiment, best.info.run_name, shots)
        registry_flow(browser, url, model, shots)
    (shots / ".mlflow-server.log").unlink()
    print(f"screenshots of {db} ({model}, {best.info.run_name}) in {shots}")


if __name__ == "__main__":
    main(*sys.argv[1:])
