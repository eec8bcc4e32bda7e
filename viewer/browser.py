"""The viewer in a headless browser: serve an app on a free local port, open the page in the system's Chromium
(driven by Playwright), take pictures. Used by ``python -m viewer --screenshot`` and by the browser tests.

Chromium is the distribution's (Debian: ``apt-get install chromium``); Playwright's own browser download is never
used. WebGL2 runs on the CPU through SwiftShader, so the pictures need no GPU.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Chromium flags for WebGL2 without a GPU (SwiftShader) in a container (no sandbox).
CHROMIUM_ARGS = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox", "--disable-dev-shm-usage")
#: Executable names tried, in order (``CHROMIUM`` in the environment first).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The path of a Chromium executable (``$CHROMIUM``, then :data:`CHROMIUM_NAMES` on ``PATH``), or None."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def why_no_browser() -> str | None:
    """None when pictures can be taken here, else the reason (what to install)."""
    try:
        import playwright.sync_api  # noqa: F401, PLC0415
    except ImportError:
        return "Playwright is not installed (pip install -r requirements-dev.txt)"
    if find_chromium() is None:
        return "no Chromium found (apt-get install chromium, or set CHROMIUM to its path)"
    from viewer.app import BUNDLE_JS  # noqa: PLC0415

    if not BUNDLE_JS.is_file():
        return f"{BUNDLE_JS} is missing (python -m viewer.vendor)"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(app: Any, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread of this process; yields its base URL (``http://host:port/``)."""
    import uvicorn  # noqa: PLC0415

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="viewer-server", daemon=True)
    thread.start()
    start = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - start > timeout:
            raise RuntimeError(f"the viewer did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout)


@contextlib.contextmanager
def browser(headless: bool = True) -> Iterator[Any]:
    """A Playwright ``Browser`` on the system's Chromium.

    Raises:
        RuntimeError: :func:`why_no_browser` says why not.
    """
    reason = why_no_browser()
    if reason:
        raise RuntimeError(f"cannot open a browser: {reason}")
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=find_chromium(), headless=headless, args=list(CHROMIUM_ARGS))
        try:
            yield b
        finally:
            b.close()


def wait_ready(page: Any, timeout: float = 60.0, case: str | None = None) -> None:
    """Wait until the page has drawn a case (``body[data-state=ready]``, of ``case`` when given); an error shown
    on the page is raised as a RuntimeError with its text."""
    sel = "body[data-state=ready]" + (f'[data-case="{case}"]' if case else "")
    page.wait_for_selector(f"{sel}, body[data-state=error]", timeout=timeout * 1000)
    if page.evaluate("document.body.dataset.state") == "error":
        raise RuntimeError(f"the page shows an error: {page.inner_text('#error')}")


def screenshot(url: str, out: str | os.PathLike, size: tuple[int, int] = (1400, 900), settle: float = 0.5) -> Path:
    """Open ``url`` (the viewer's page, with its query: ``case``, ``mode``, ``hide``) and save a PNG of it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with browser() as b:
        page = b.new_page(viewport={"width": size[0], "height": size[1]})
        page.goto(url)
        wait_ready(page)
        time.sleep(settle)
        page.screenshot(path=str(out))
    return out
