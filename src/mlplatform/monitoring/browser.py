"""Open a local HTML page in headless Chromium: a screenshot, its console, its requests.

Used by tests to check that a report renders, logs nothing to the console and asks no other
host for anything. Requests are read from Chromium's own network log (--log-net-log): every
URL request the page started (its network isolation key is the page's file:// site) that is
not a file: or data: URL counts. Chromium's own background traffic (update checks and the
like) has a different key and is not the page's doing; name resolution is mapped to nowhere
so none of it leaves the machine either.

Debian package: ``apt-get install -y chromium``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlplatform.errors import MlplatformError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")
_CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]?\s*(.*)")


@dataclass
class PageCheck:
    """What loading a page did."""

    screenshot: Path
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _page_requests(netlog: Path) -> list[str]:
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event.get("type") != start_job or "url" not in params:
            continue
        key = str(params.get("network_isolation_key", ""))
        if key.startswith("file://") and not params["url"].startswith(("file:", "data:")):
            urls.append(params["url"])
    return sorted(set(urls))


def check_page(
    html: Path | str, png: Path | str, width: int = 1400, height: int = 3000, timeout: int = 90
) -> PageCheck:
    """Load html in headless Chromium; write a screenshot to png; report console and requests.

    Args:
        html: the page (a local file).
        png: where the screenshot goes (the viewport: width x height pixels).
        width: viewport width.
        height: viewport height; make it tall enough for the whole page.
        timeout: seconds before giving up.

    Raises:
        MlplatformError: Chromium is not installed, fails, or writes no screenshot.
    """
    exe = find_chromium()
    if exe is None:
        raise MlplatformError("chromium not found on PATH (apt-get install -y chromium)")
    html, png = Path(html).resolve(), Path(png).resolve()
    with tempfile.TemporaryDirectory(prefix="mlplatform-chromium-") as tmp:
        netlog = Path(tmp) / "netlog.json"
        cmd = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
            f"--log-net-log={netlog}",
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            html.as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0 or not png.is_file():
            tail = " ".join(proc.stderr.strip().splitlines()[-3:])
            raise MlplatformError(f"chromium failed on {html} (exit {proc.returncode}): {tail}")
        console = [m.group(1) for m in map(_CONSOLE.search, proc.stderr.splitlines()) if m]
        requests = _page_requests(netlog) if netlog.is_file() else []
    return PageCheck(png, console, requests)
