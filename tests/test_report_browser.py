"""report.html in a real headless browser (Debian's `chromium`), driven over the DevTools protocol
with the standard library only: the page loads without a JavaScript error, a console error or a
failed or external resource load; every plot is an embedded PNG that the browser decoded
(naturalWidth > 0); the answer (N_opt, D_opt, loss per budget and the verdict) comes before the
first table. Copies of the page broken on purpose show that each check can fail.

Without chromium the tests skip on a developer's machine and fail where CI is set (.ci/run
installs it). `python tests/test_report_browser.py docs/report.png` rewrites the README's
screenshot from a fit of the Chinchilla fixture.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

MISSING = "chromium not installed (apt-get install chromium)"
BUDGETS = (1e21, 1e22)
TIMEOUT = 15.0  # seconds for the browser to start, answer a command or load a page


def chromium() -> str:
    """The chromium executable; without one, a skip on a developer's machine, a failure in CI."""
    exe = shutil.which("chromium")
    if exe is None:
        if "CI" in os.environ:
            pytest.fail(f"{MISSING}: CI must install it (.ci/run does, before make test)", pytrace=False)
        pytest.skip(MISSING)
    return exe


class Browser:
    """A headless chromium and one DevTools websocket to it (RFC 6455 client frames, masked)."""

    def __init__(self, exe: str, profile: Path):
        self.proc = subprocess.Popen(
            [exe, "--headless", "--disable-gpu", "--no-sandbox", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--hide-scrollbars", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.sock, self.buf, self.next_id, self.events = None, bytearray(), 0, []
        try:
            port, path = self._endpoint(profile / "DevToolsActivePort")
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            key = base64.b64encode(os.urandom(16)).decode()
            self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                              .encode())
            while b"\r\n\r\n" not in self.buf:
                self._fill()
            head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
            self.buf = bytearray(rest)
            if b" 101 " not in head.split(b"\r\n")[0]:
                raise ConnectionError(f"DevTools refused the websocket: {head[:200]!r}")
        except BaseException:
            self.close()
            raise

    def _endpoint(self, active_port: Path) -> tuple[int, str]:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited at start with code {self.proc.returncode}")
            lines = active_port.read_text().split("\n") if active_port.exists() else []
            if len(lines) >= 2 and lines[1].strip():
                return int(lines[0]), lines[1].strip()
            time.sleep(0.05)
        raise TimeoutError(f"chromium wrote no {active_port.name} in {TIMEOUT:.0f} s")

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("DevTools closed the connection")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        size = bytes([0x80 | n]) if n < 126 else (bytes([0xFE]) + struct.pack("!H", n) if n < 1 << 16
                                                   else bytes([0xFF]) + struct.pack("!Q", n))
        mask = os.urandom(4)
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        self.sock.sendall(bytes([0x80 | opcode]) + size + mask + masked)

    def _message(self) -> dict:
        parts = []
        while True:
            b0, b1 = self._take(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n >= 126:
                n = struct.unpack("!H" if n == 126 else "!Q", self._take(2 if n == 126 else 8))[0]
            data = self._take(n)  # frames from a server are never masked
            if opcode == 8:
                raise ConnectionError("DevTools closed the websocket")
            if opcode == 9:
                self._send(10, data)
            elif opcode in (0, 1, 2):
                parts.append(data)
                if b0 & 0x80:
                    return json.loads(b"".join(parts))

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one DevTools command and return its result; events read meanwhile are kept."""
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._send(1, json.dumps(msg).encode())
        while True:
            m = self._message()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def wait_for(self, event: str, session: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not any(e.get("method") == event and e.get("sessionId") == session for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} in {TIMEOUT:.0f} s")
            self.events.append(self._message())

    def open(self, path: Path, width: int = 1000, height: int = 900) -> dict:
        """Load a file, return what CHECK_JS reads from its DOM, the errors it caused ("errors")
        and a PNG screenshot of the viewport ("screenshot", bytes)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Runtime", "Log", "Network", "Page"):
                self.call(f"{domain}.enable", session=session)
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
            url = path.resolve().as_uri()
            nav = self.call("Page.navigate", {"url": url}, session)
            if nav.get("errorText"):
                raise RuntimeError(f"cannot load {url}: {nav['errorText']}")
            self.wait_for("Page.loadEventFired", session)
            page = self.call("Runtime.evaluate", {"expression": CHECK_JS, "returnByValue": True,
                                                  "awaitPromise": True}, session)
            if "exceptionDetails" in page:
                raise RuntimeError(f"the check script failed: {page['exceptionDetails']}")
            out = page["result"]["value"]
            shot = self.call("Page.captureScreenshot", {"format": "png"}, session)
            out["screenshot"] = base64.b64decode(shot["data"])
            out["errors"] = errors([e for e in self.events if e.get("sessionId") == session], url)
            return out
        finally:
            self.call("Target.closeTarget", {"targetId": target})

    def close(self) -> None:
        try:
            if self.sock is not None:
                self.call("Browser.close")
        except (OSError, RuntimeError, ValueError):
            pass
        if self.sock is not None:
            self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this Browser started, by its id
            self.proc.wait()


def errors(events: list[dict], page_url: str) -> list[str]:
    """JavaScript exceptions, console errors, logged errors (a failed load among them), failed
    requests, and any request for something other than the page itself or a data: URI (the
    report is self-contained)."""
    out, urls = [], {}
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Network.requestWillBeSent":
            urls[p["requestId"]] = p["request"]["url"]
        if m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            out.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description", "")))
                                                           for a in p.get("args", [])))
        elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(f"log ({p['entry']['source']}): {p['entry']['text']} {p['entry'].get('url', '')[:200]}".rstrip())
        elif m == "Network.loadingFailed":
            out.append(f"failed load: {p['errorText']} {urls.get(p['requestId'], '')[:200]}".rstrip())
        elif m == "Network.requestWillBeSent":
            url = p["request"]["url"]
            if url != page_url and not url.startswith("data:"):
                out.append(f"external resource: {url[:200]}")
    return out


CHECK_JS = r"""
(async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const h2 = [...document.querySelectorAll('h2')];
  const answer = h2.find(h => h.textContent.startsWith('Answer'));
  let text = '', verdict = null;
  for (let el = answer && answer.nextElementSibling; el && el.tagName !== 'H2' && el.tagName !== 'TABLE';
       el = el.nextElementSibling) {
    text += el.textContent + '\n';
    if (el.textContent.startsWith('Verdict:')) verdict = el;
  }
  const table = document.querySelector('table');
  const before = (a, b) => !!(a && b && (a.compareDocumentPosition(b) & Node.DOCUMENT_POSITION_FOLLOWING));
  return {
    title: document.title,
    images: imgs.map(i => ({alt: i.alt, src: (i.getAttribute('src') || '').slice(0, 22), complete: i.complete,
                            width: i.naturalWidth, height: i.naturalHeight})),
    tables: document.querySelectorAll('table').length,
    first_heading: h2.length ? h2[0].textContent : null,
    answer: answer ? text : null,
    answer_before_table: before(answer, table) && before(verdict, table),
  };
})()
"""


# ----------------------------------------------------------------------------- fixtures


def synthetic_fit(out: Path, budgets=BUDGETS) -> list[str]:
    """A small synthetic IsoFLOP study (3 budgets x 5 sizes, plus a longer copy for approach 1)
    fitted and written to out; returns the names of its PNG plots."""
    import numpy as np
    import pandas as pd

    from conftest import TRUE_LAW_PARAMS
    from scaleflow.fit.api import FitOptions, fit
    from scaleflow.fit.isoflop import simulate
    from scaleflow.fit.laws import ChinchillaLaw
    from scaleflow.report import write

    true = ChinchillaLaw(**TRUE_LAW_PARAMS)
    t = simulate(true, np.geomspace(1e18, 1e20, 3), sizes_per_budget=5, noise=0.002)
    t = pd.concat([t, t.assign(tokens=t["tokens"] * 2, flops=t["flops"] * 2, budget=np.nan,
                               loss=true.predict(t["params"], t["tokens"] * 2))], ignore_index=True)
    run = fit(t, FitOptions(n_bootstrap=10, predict=budgets))
    return [p.name for p in write(run, out, "scaleflow fit study.csv --predict 1e21,1e22") if p.suffix == ".png"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(chromium(), tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    return out, synthetic_fit(out)


# ----------------------------------------------------------------------------- tests


def test_report_in_a_browser(browser, report, tmp_path):
    out, plots = report
    page = browser.open(out / "report.html")
    assert page["errors"] == [], f"the browser reported: {page['errors']}"
    assert len(plots) >= 4 and len(page["images"]) == len(plots), (plots, page["images"])
    for img in page["images"]:
        assert img["src"].startswith("data:image/png;base64"), img
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, f"plot {img['alt']} not rendered: {img}"
    assert page["first_heading"].startswith("Answer") and page["answer_before_table"], page
    answer = page["answer"]
    assert "C = 1e21 FLOPs" in answer and "C = 1e22 FLOPs" in answer, answer
    x, ci = r"[0-9.]+(e[0-9]+)?", r" \[[0-9.]+(e[0-9]+)?, [0-9.]+(e[0-9]+)?\]"  # 2.79e9 [2.43e9, 3.29e9]
    line = re.compile(f"approach3: N = {x}{ci}, D = {x}{ci} \\({x} tokens per parameter\\), loss {x}{ci}")
    assert len(line.findall(answer)) == 2, answer
    assert re.search(r"Verdict: the approaches (agree|DISAGREE) on a \(N_opt ~ C\^a\): approach3 ", answer), answer
    assert page["tables"] > 0
    shot = page["screenshot"]
    assert shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) > 10_000
    (tmp_path / "report.png").write_bytes(shot)


def broken(html: str) -> dict[str, str]:
    """report.html broken four ways, each of which one check must catch."""
    i = html.index("base64,") + len("base64,")
    table = html[html.index("<table>"):html.index("</table>") + len("</table>")]
    return {
        "corrupt plot": html[:i] + "AAAA" + html[i + 40:],
        "script error": html.replace("</body>", "<script>undefined_function()</script></body>"),
        "external plot": html.replace("data:image/png;base64,", "missing.png#", 1),
        "table first": html.replace("<body>", "<body>" + table, 1),
    }


def test_the_checks_catch_a_broken_report(browser, report, tmp_path):
    out, _ = report
    pages = {}
    for name, html in broken((out / "report.html").read_text()).items():
        path = tmp_path / f"{name.replace(' ', '_')}.html"
        path.write_text(html)
        pages[name] = browser.open(path)
    corrupt = pages["corrupt plot"]
    assert any(i["width"] == 0 for i in corrupt["images"]), corrupt["images"]
    assert any("exception: ReferenceError: undefined_function" in e for e in pages["script error"]["errors"])
    ext = pages["external plot"]["errors"]
    assert any(e.startswith("external resource: file://") for e in ext) and any("failed load" in e for e in ext), ext
    assert not pages["table first"]["answer_before_table"]
    assert all(p["answer_before_table"] for k, p in pages.items() if k != "table first")


def test_chromium_missing_skips_here_and_fails_in_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"chromium not installed \(apt-get install chromium\)"):
        chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium not installed"):
        chromium()


# ----------------------------------------------------------------------------- docs/report.png


def chinchilla_screenshot(png: Path) -> None:
    """docs/report.png: the top of report.html for Epoch AI's Chinchilla data (tests/fixtures)."""
    from scaleflow.fit.api import FitOptions, fit
    from scaleflow.report import write

    png = png.resolve()
    os.chdir(Path(__file__).parent.parent)  # the report names its source relative to the repository
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        options = FitOptions(columns={"params": "Model Size", "flops": "Training FLOP"}, where="loss < 3.43",
                             n_bootstrap=200, predict=(1e21, 1e22, 1e23))
        write(fit("tests/fixtures/chinchilla/svg_extracted_data.csv", options), tmp / "fit",
              "scaleflow fit tests/fixtures/chinchilla/svg_extracted_data.csv --col params=\"Model Size\" "
              "--col flops=\"Training FLOP\" --where \"loss < 3.43\" --predict 1e21,1e22,1e23 --out fit")
        b = Browser(shutil.which("chromium") or sys.exit(MISSING), tmp / "profile")
        try:
            page = b.open(tmp / "fit" / "report.html", width=1150, height=760)
        finally:
            b.close()
    if page["errors"]:
        sys.exit(f"the browser reported: {page['errors']}")
    png.write_bytes(page["screenshot"])
    print(f"wrote {png} ({len(page['screenshot']) // 1024} KB)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    chinchilla_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/report.png"))
