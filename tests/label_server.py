"""Helpers for the `alignlab label` tests: the server in its own process, and what the page shows."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
RESPONSES = [
    {"id": "p1", "prompt": "Which is best?", "responses": ["a best", "a worst", "a middle"]},
    {"id": "p2", "prompt": [{"role": "user", "content": "Two tie?"}], "responses": ["b1", "b2", "b3"]},
    {"id": "p3", "prompt": "Third", "responses": ["c1", "c2", "c3"]},
    {"id": "p4", "prompt": "Repeats", "responses": ["d same", "d other", "d same"]},
    {"id": "p5", "prompt": "Collapsed", "responses": ["e", "e"]},  # one distinct text: left out
]


class LabelServer:
    """`alignlab label IN --out OUT --port 0 ...` in a child process; `url` is the one it printed."""

    def __init__(self, source: Path, out: Path, *extra: str, timeout: float = 90.0):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "alignlab.cli", "label", str(source), "--out", str(out), "--port", "0", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.output: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise TimeoutError(f"the label server printed no URL in {timeout} s: {self.output}") from None
            if line is None:
                raise RuntimeError(f"the label server exited {self.process.wait()}: {''.join(self.output)}")
            self.output.append(line)
            found = re.search(r"open (http://\S+)", line)
            if found:
                self.url = found.group(1)
                return

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def page_url(self, annotator: str = "") -> str:
        if not annotator:
            return self.url
        return self.url + ("&" if "?" in self.url else "?") + f"annotator={annotator}"

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as when the machine or the terminal dies."""
        self.process.kill()
        self.process.wait(timeout=30)
        self.process.stdout.close()


def get(url: str, headers: dict | None = None, data: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def read_labels(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def shown_texts(page) -> list[str]:
    """The texts of the unranked cards, in the order the page shows them."""
    return page.locator("#pool .card .text").all_inner_texts()


def press_for(page, shown: list[str], text: str, *, shift: bool = False) -> None:
    """Press the number key of the response with this text (its place in the shown order)."""
    key = str(shown.index(text) + 1)
    page.keyboard.press(f"Shift+Digit{key}" if shift else key)
