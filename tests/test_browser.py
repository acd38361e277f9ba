"""The try-it panels in a real browser: JupyterLab + headless Chromium (the distribution's, via Selenium).

For each notebook: open it in JupyterLab, run every cell (tiny scale, preset fast), check that no
widget failed to render, change one control of the panel, press its button, and wait until the
panel's headline names the new value. Screenshots go to ``$PERFLAB_BUILD_DIR/browser/``.

Needs ``chromium`` and ``chromedriver`` on PATH (Debian: ``apt-get install chromium chromium-driver``;
``.ci/run`` installs them in CI). Without them the test skips and says so. Nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from perflab import paths

ROOT = Path(__file__).resolve().parent.parent
# notebook: (label of the control to change, value to type, text the new headline must contain)
PANELS = {
    "01_let_the_index_work": ("window", "6", "window = 6 hours"),
    "02_n_plus_one": ("N (orders)", "40", "N (orders) = 40"),
    "03_tail_latency": ("customer (1 = the big tenant)", "1500", "customer (1 = the big tenant) = 1,500"),
    "04_slow_queries": ("threshold", "5", "threshold = 5 ms"),
    "05_connection_pooling": ("pool size", "3", "pool size = 3"),
    "06_async_gather": ("calls", "30", "calls = 30"),
    "07_redis_caching": ("TTL", "100", "TTL = 100 ms"),
    "08_celery_offload": ("arrival rate", "10", "arrival rate = 10 orders/s"),
    "09_data_structures": ("n (items)", "1000", "n (items) = 1,000"),
    "10_profiling": ("orders in the report", "1000", "orders in the report = 1,000"),
    "11_scaling_out": ("writes", "100", "writes = 100 per s"),
}
# make test runs four (~1 min each on a quiet machine); PERFLAB_BROWSER_NOTEBOOKS=all (or "03,07") runs others.
_CHOSEN = os.environ.get("PERFLAB_BROWSER_NOTEBOOKS", "01,02,05,06")
CASES = {name: case for name, case in PANELS.items() if _CHOSEN == "all" or name[:2] in _CHOSEN.split(",")}
INSTALL_HINT = ("no Chromium here: install the distribution's browser and driver (Debian/Ubuntu, as root: "
                "apt-get update && apt-get install -y chromium chromium-driver); .ci/run does it in CI")
RUN_ALL_TIMEOUT = 240
PANEL_TIMEOUT = 90


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# PERFLAB_BROWSER_LAB="http://127.0.0.1:8888/lab?token=…" drives a JupyterLab already running (the one
# `make lab` started, serving work/), at whatever scale it runs, instead of starting one at tiny.
_EXTERNAL = os.environ.get("PERFLAB_BROWSER_LAB")
TREE = "notebooks/" if _EXTERNAL else ""


def _external_lab() -> tuple[str, str, None]:
    parsed = urllib.parse.urlparse(_EXTERNAL)
    token = urllib.parse.parse_qs(parsed.query).get("token", [""])[0]
    url = f"{parsed.scheme}://{parsed.netloc}"
    # Every cell in the DOM (the test reads every prompt): the same setting the test's own JupyterLab gets.
    request = urllib.request.Request(
        f"{url}/lab/api/settings/@jupyterlab/notebook-extension:tracker?token={token}", method="PUT",
        data=json.dumps({"raw": json.dumps({"windowingMode": "none"})}).encode(),
        headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).close()
    return url, token, None


@pytest.fixture(scope="module")
def jupyterlab(tiny_data, tmp_path_factory):
    """JupyterLab on a free 127.0.0.1 port with a token, serving copies of the notebooks under test."""
    pytest.importorskip("selenium", reason="selenium is in the test extra: make setup")
    if _chromium() is None:
        pytest.skip(INSTALL_HINT)
    if _EXTERNAL:
        yield _external_lab()
        return
    if not (Path(sys.executable).parent / "jupyter-lab").exists():
        pytest.skip("JupyterLab is not installed in this environment: make setup (the lab extra)")
    home = tmp_path_factory.mktemp("lab")
    for name in CASES:
        shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", home / f"{name}.ipynb")
    settings = home / ".settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Every cell in the DOM (no windowing), so the test can read every prompt; no autosave into the copies.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    docmanager = home / ".settings" / "@jupyterlab" / "docmanager-extension"
    docmanager.mkdir(parents=True)
    (docmanager / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    apputils = home / ".settings" / "@jupyterlab" / "apputils-extension"
    apputils.mkdir(parents=True)   # no "official Jupyter news?" toast over the panels in the screenshots
    (apputils / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = _free_port(), os.urandom(12).hex()
    command = [str(Path(sys.executable).parent / "jupyter"), "lab", "--ip=127.0.0.1", f"--port={port}",
               "--no-browser", f"--ServerApp.token={token}", f"--ServerApp.root_dir={home}",
               "--ServerApp.port_retries=0", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(home / ".settings"),
           "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
           # what the notebooks record goes to a build folder of their own, not the one the lesson
           # notebooks' run fills and the report's audit reads (they may run at the same time)
           "PERFLAB_BUILD_DIR": str(Path(paths.BUILD_DIR) / "browser" / "build")}
    env.pop("PERFLAB_WIDGETS", None)  # live because JupyterLab started the kernel (JPY_SESSION_NAME)
    log = open(home / "jupyterlab.log", "w")
    server = subprocess.Popen(command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited: {(home / 'jupyterlab.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.3)
    else:
        server.terminate()
        pytest.fail(f"JupyterLab did not listen on {port} within 60 s")
    yield url, token, home
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="module")
def browser(jupyterlab):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch a browser or driver
    binary, driver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    yield chrome
    chrome.quit()


def _screens() -> Path:
    folder = Path(paths.BUILD_DIR) / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait(condition, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _prompts(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'))"
        ".map(e => e.textContent.trim())")


@pytest.mark.notebook
@pytest.mark.parametrize("name", list(CASES))
def test_panel_runs_in_jupyterlab(name, jupyterlab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, token, _home = jupyterlab
    label, value, expected = CASES[name]
    shots = _screens()
    started = time.monotonic()
    # A workspace of its own, reset: only this notebook is open (JupyterLab restores tabs otherwise).
    browser.get(f"{url}/lab/workspaces/t{name[:2]}/tree/{TREE}{name}.ipynb?reset&token={token}")
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell"), 60, "the notebook")
    _wait(lambda: "Idle" in browser.find_element(By.ID, "jp-main-statusbar").text, 60, "an idle kernel")
    # Run ▸ Run All Cells, through the menu as a learner would.
    browser.find_element(By.XPATH, "//div[@id='jp-MainMenu']//li[normalize-space()='Run']").click()
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "li[data-command='runmenu:run-all']"), 10,
          "the Run menu")
    browser.find_element(By.CSS_SELECTOR, "li[data-command='runmenu:run-all']").click()
    _wait(lambda: any("*" in p for p in _prompts(browser)), 30, "cells to start")
    _wait(lambda: not any("*" in p for p in _prompts(browser)), RUN_ALL_TIMEOUT, "every cell to finish")
    ran = time.monotonic() - started
    browser.save_screenshot(str(shots / f"{name}_after_run_all.png"))
    prompts = _prompts(browser)
    errors = browser.execute_script(
        "return Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type="
        "\"application/vnd.jupyter.stderr\"]')).map(e => e.textContent).filter(t => t.includes('Error') "
        "|| t.includes('Traceback')).map(t => t.slice(0, 600))")
    assert all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), f"{name}: not every cell ran: {prompts}; {errors}"
    assert not errors, f"{name}: a cell failed: {errors}"
    page = browser.find_element(By.CSS_SELECTOR, ".jp-Notebook").text
    assert "Error displaying widget" not in page, f"{name}: a widget failed to render"
    panels = browser.find_elements(By.CSS_SELECTOR, ".perflab-panel")
    assert panels, f"{name}: no try-it panel rendered (static text instead of a live widget?)"
    panel = panels[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", panel)
    headline = panel.find_element(By.CSS_SELECTOR, ".perflab-headline")
    before = headline.text
    field = panel.find_element(By.XPATH, f".//div[contains(@class,'widget-inline-hbox')][.//label[starts-with("
                                         f"normalize-space(), '{label} (')]]//input")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(value, Keys.ENTER)
    panel.find_element(By.CSS_SELECTOR, "button.perflab-run").click()
    _wait(lambda: headline.text != before and expected in headline.text, PANEL_TIMEOUT,
          f"the headline to name {expected!r} (status: {panel.find_element(By.CSS_SELECTOR, '.perflab-status').text})")
    _wait(lambda: panel.find_elements(By.CSS_SELECTOR, ".perflab-output .jp-OutputArea-output"), 30,
          "the panel's figure or table")
    images = panel.find_elements(By.CSS_SELECTOR, ".perflab-output img")
    assert all(browser.execute_script("return arguments[0].naturalWidth", img) > 0 for img in images), \
        f"{name}: a figure in the panel did not load"
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", panel)
    browser.save_screenshot(str(shots / f"{name}_panel.png"))
    line = f"{name}: run all {ran:.0f} s, panel {time.monotonic() - started - ran:.0f} s; {headline.text}"
    print(line)
    with open(shots / "panels.txt", "a", encoding="utf-8") as log:   # what each panel measured, for people
        log.write(line.replace("\n", " ") + "\n")


@pytest.fixture(autouse=True)
def _stop_kernels_after(request):
    """Each notebook's kernel (its servers, its data copy) is shut down when its test ends."""
    yield
    if "jupyterlab" not in request.fixturenames:
        return
    url, token, _home = request.getfixturevalue("jupyterlab")
    headers = {"Authorization": f"token {token}"}
    with urllib.request.urlopen(urllib.request.Request(f"{url}/api/sessions", headers=headers), timeout=10) as reply:
        sessions = json.load(reply)
    for session in sessions:
        urllib.request.urlopen(urllib.request.Request(f"{url}/api/sessions/{session['id']}", method="DELETE",
                                                      headers=headers), timeout=30).close()
