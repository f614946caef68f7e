"""A small Chrome DevTools Protocol client for the browser tests (not a test module).

`open_page` starts Debian's headless Chromium (``/usr/bin/chromium``) with an
empty profile and networking off, opens a file from disk, waits until the page
has loaded and its scripts have settled, and returns what a test asserts on:
failed requests, console errors and uncaught exceptions, values of JavaScript
expressions, and a PNG screenshot. Talks to the browser over a WebSocket
(``websocket-client``); nothing is downloaded.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--hide-scrollbars", "--mute-audio", "--remote-debugging-port=0", "--remote-allow-origins=*",
)  # fmt: skip


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageResult:
    failed_requests: list[str] = field(default_factory=list)  # URL and error text of each failed load
    console_errors: list[str] = field(default_factory=list)  # console.error, uncaught exceptions, log errors
    values: dict[str, object] = field(default_factory=dict)  # expression -> its value after loading
    screenshot: bytes = b""  # PNG of the full page, every pixel of its height (taken in tiles)
    height: int = 0  # the page's full height in CSS pixels (document.documentElement.scrollHeight)


class _Session:
    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if any(e.get("method") == method for e in self.events):
            return
        self.ws.settimeout(timeout)
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            self.events.append(message)
            if message.get("method") == method:
                return
        raise TimeoutError(f"no {method} within {timeout} s")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")


TILE = 4000  # screenshot tile height: one capture of a tall page stops at the GPU's texture limit (~16k px)


def _full_screenshot(session: _Session, *, width: int, height: int) -> bytes:
    """The whole page, top to bottom: the window scrolled by `TILE` pixels, each view captured and stitched.

    The viewport keeps one size throughout (set before the page was measured), so nothing
    re-lays out between the measurement and the pixels (one capture beyond the viewport
    resizes it, and responsive figures then move).
    """
    import io

    from PIL import Image

    page = Image.new("RGB", (width, height), "white")
    for top in range(0, height, TILE):
        session.evaluate(f"window.scrollTo(0, {top})")
        time.sleep(0.3)
        scrolled = int(session.evaluate("window.scrollY"))
        data = session.call("Page.captureScreenshot", format="png")["data"]
        page.paste(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), (0, scrolled))
    session.evaluate("window.scrollTo(0, 0)")
    out = io.BytesIO()
    page.save(out, format="PNG")
    return out.getvalue()


def open_page(
    path: Path, *, expressions: dict[str, str], ready: str, timeout: float = 120, width: int = 1300
) -> PageResult:
    """Open ``path`` offline; wait until the JavaScript ``ready`` is true; evaluate ``expressions``."""
    binary = chromium_path()
    if binary is None:
        raise RuntimeError("no chromium on PATH")
    profile = Path(tempfile.mkdtemp(prefix="headkit-chromium-"))
    proc = subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as reply:
            targets = json.load(reply)
        page = next(t for t in targets if t.get("type") == "page")
        session = _Session(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            session.call(f"{domain}.enable")
        session.call(
            "Network.emulateNetworkConditions", offline=True, latency=0, downloadThroughput=-1, uploadThroughput=-1
        )
        session.call("Page.navigate", url=path.resolve().as_uri())
        session.wait_for("Page.loadEventFired", timeout)
        while not session.evaluate(f"Boolean({ready})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page not ready ({ready}) within {timeout} s")
            time.sleep(0.25)
        # the viewport the screenshot is taken in, set before measuring (figures re-lay out on resize)
        session.call("Emulation.setDeviceMetricsOverride", width=width, height=TILE, deviceScaleFactor=1, mobile=False)
        time.sleep(1.0)  # let late errors arrive, and the layout settle
        values = {name: session.evaluate(expr) for name, expr in expressions.items()}
        height = int(session.evaluate("document.documentElement.scrollHeight"))
        shot = _full_screenshot(session, width=width, height=height)
        session.call("Runtime.evaluate", expression="0")  # drain events that arrived meanwhile
        result = PageResult(values=values, screenshot=shot, height=height)
        for event in session.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.loadingFailed":
                result.failed_requests.append(f"{params.get('type')} {params.get('errorText')} {params.get('requestId')}")
            elif method == "Runtime.exceptionThrown":
                result.console_errors.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                result.console_errors.append(json.dumps(params.get("args", []))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                result.console_errors.append(params["entry"].get("text", "")[:500])
        session.ws.close()
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
