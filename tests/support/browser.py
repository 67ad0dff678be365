"""Headless Chromium (Debian's ``chromium`` package), driven over the DevTools protocol.

    async with chromium() as page:
        await page.goto("http://127.0.0.1:16686/trace/...")
        await page.wait_for("document.querySelector('.span-name') !== null", "the timeline")
        text = await page.evaluate("document.body.innerText")
        await page.screenshot(path)

The browser gets a fresh profile and no network beyond what the page asks for: the
flags below turn off everything it would fetch by itself (updates, sync, field trials),
which a machine with a closed network would refuse, many times a second. No browser is
downloaded: ``hack/test`` installs Debian's package (``/usr/bin/chromium``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_ENV = "AGENT_ROUTER_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",  # as root; the test's own pages only
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # it writes the port it chose to DevToolsActivePort
)
START_TIMEOUT = 60.0


class BrowserError(RuntimeError):
    """Chromium did not start, a page script failed, or a wait ran out."""


def find_chromium() -> Path:
    """``AGENT_ROUTER_CHROMIUM``, else Debian's ``/usr/bin/chromium``."""
    path = Path(os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM)
    if not os.access(path, os.X_OK):
        raise BrowserError(
            f"no Chromium at {path}: install Debian's package "
            f"(`apt-get install chromium`; hack/test does) or set {CHROMIUM_ENV}"
        )
    return path


class Page:
    """One tab, over its DevTools websocket. Calls are answered in order; the events the
    browser sends meanwhile are not needed here and are dropped."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result."""
        call_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            reply = json.loads(message.data)
            if reply.get("id") != call_id:
                continue  # an event
            if "error" in reply:
                raise BrowserError(f"{method} failed: {reply['error']}")
            return dict(reply.get("result") or {})
        raise BrowserError(f"the browser closed its connection during {method}")

    async def goto(self, url: str) -> None:
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"could not open {url}: {result['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            message = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"page script failed: {message}\n{expression}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, what: str, timeout: float = 60.0) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                text = await self.evaluate("document.body ? document.body.innerText : ''")
                raise BrowserError(
                    f"no {what} within {timeout:.0f}s; the page shows:\n{str(text)[:2000]}"
                )
            await asyncio.sleep(0.2)

    async def screenshot(self) -> bytes:
        """A PNG of the whole page (its full height, not only the window)."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        shot = await self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
        return base64.b64decode(shot["data"])


def _start(
    binary: Path, user_data: Path, log: Path, width: int, height: int
) -> tuple[subprocess.Popen[bytes], int]:
    """Start Chromium; return it and its DevTools port, read from the file it writes into
    its profile once it listens."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                *FLAGS,
                f"--user-data-dir={user_data}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    active = user_data / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return proc, int(active.read_text().splitlines()[0])
        if proc.poll() is not None or time.monotonic() > deadline:
            why = (
                f"exited with code {proc.returncode}"
                if proc.returncode is not None
                else f"did not listen within {START_TIMEOUT:.0f}s"
            )
            _stop(proc)
            raise BrowserError(
                f"Chromium {why}; its log:\n{log.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # its renderers too
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.asynccontextmanager
async def chromium(width: int = 1400, height: int = 900) -> AsyncIterator[Page]:
    """A headless Chromium with a fresh profile and one blank tab of ``width``x``height``;
    stopped and its profile removed on exit."""
    binary = find_chromium()
    user_data = Path(tempfile.mkdtemp(prefix="agent-router-chromium-"))
    log = user_data.parent / f"{user_data.name}.log"
    try:
        proc, port = await asyncio.to_thread(_start, binary, user_data, log, width, height)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    targets = await resp.json()
                tab = next((t for t in targets if t.get("type") == "page"), None)
                if tab is None:
                    raise BrowserError(f"Chromium has no tab to drive: {targets}")
                async with http.ws_connect(tab["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    page = Page(ws)
                    await page.send("Page.enable")
                    await page.send(
                        "Emulation.setDeviceMetricsOverride",
                        width=width,
                        height=height,
                        deviceScaleFactor=1,
                        mobile=False,
                    )
                    yield page
        finally:
            await asyncio.to_thread(_stop, proc)
    finally:
        shutil.rmtree(user_data, ignore_errors=True)
        log.unlink(missing_ok=True)
