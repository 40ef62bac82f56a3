"""Open an executed notebook in JupyterLab, in headless Chromium, and save a screenshot of it.

Shows that the results notebook renders in JupyterLab with its figures, without a person at a browser: a private
JupyterLab server on 127.0.0.1 (random token, throw-away settings and workspace folders, so no user state leaks in or
out) serves the notebook's folder; Debian's ``chromium`` opens it headless and writes a PNG. Nothing is executed:
JupyterLab shows the outputs stored in the executed notebook.

Usage (after ``make reproduce``, which leaves executed notebooks in ``runs/<run>/notebooks/``)::

    .venv/bin/python scripts/screenshot_lab.py                       # runs/tiny/notebooks/06_results.ipynb
    .venv/bin/python scripts/screenshot_lab.py --notebook path/to/executed.ipynb --out figures/lab.png

Needs ``chromium`` on PATH (``apt-get install chromium`` on Debian/Ubuntu).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NOTEBOOK = ROOT / "runs" / "tiny" / "notebooks" / "06_results.ipynb"
DEFAULT_OUT = ROOT / "figures" / "06_jupyterlab.png"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# JupyterLab user settings for the screenshot: render every cell (not only those scrolled into view) and keep the
# news prompt and other toasts from covering the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "doNotDisturbMode": True},
}


class ScreenshotError(RuntimeError):
    """The server or the browser failed; the message says which and shows its output."""


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_lab_settings(settings_dir: Path) -> None:
    for rel, values in LAB_SETTINGS.items():
        target = settings_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))


def wait_for_server(url: str, server: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ScreenshotError(f"JupyterLab exited with code {server.returncode} before answering:\n"
                                  f"{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise ScreenshotError(f"JupyterLab did not answer at {url} within {timeout:.0f} s")


def screenshot_notebook(notebook: Path, out: Path, width: int = 1400, height: int = 3200,
                        render_ms: int = 25000, timeout: float = 120.0) -> Path:
    """Serve ``notebook`` with JupyterLab on 127.0.0.1, screenshot it with headless Chromium, write ``out``."""
    notebook, out = Path(notebook).resolve(), Path(out).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook} not found: execute the notebook first (make reproduce)")
    chromium = find_chromium()
    if chromium is None:
        raise ScreenshotError(f"none of {', '.join(CHROMIUM_NAMES)} is on PATH; install Debian's chromium "
                              f"(apt-get install chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="platypus_lab_") as tmp:
        tmp = Path(tmp)
        write_lab_settings(tmp / "settings")
        port, token = free_port(), secrets.token_hex(16)
        server_cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                      f"--ServerApp.root_dir={notebook.parent}", f"--IdentityProvider.token={token}",
                      f"--LabApp.user_settings_dir={tmp / 'settings'}",
                      f"--LabApp.workspaces_dir={tmp / 'workspaces'}", "--ServerApp.open_browser=False", "--allow-root"]
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
        log = (tmp / "server.log").open("w")
        server = subprocess.Popen(server_cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for_server(f"{base}/api/status?token={token}", server, tmp / "server.log", timeout)
            url = f"{base}/lab/tree/{quote(notebook.name)}?reset&token={token}"
            browser_cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp / 'chromium'}",
                           f"--window-size={width},{height}", f"--virtual-time-budget={render_ms}",
                           f"--screenshot={out}", url]
            done = subprocess.run(browser_cmd, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0 or not out.is_file():
                raise ScreenshotError(f"chromium failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebook", type=Path, default=DEFAULT_NOTEBOOK, help="an executed notebook")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument("--height", type=int, default=3200, help="browser window height in pixels")
    args = parser.parse_args()
    print(screenshot_notebook(args.notebook, args.out, height=args.height))


if __name__ == "__main__":
    main()
