"""The sandbox acquirer as a real subprocess, for tests (no Django, no shop database needed).

    acquirer = SandboxAcquirer(webhook_url="http://127.0.0.1:9999/hooks").start()
    try:
        acquirer.set_faults("alpha", decline_rate=1.0)
        status, body = acquirer.call("POST", "/channels/alpha/payments/authorize", {...})
    finally:
        acquirer.close()

Each instance has its own temporary SQLite file (unless ``db_path`` is given) and listens on
a free port chosen by the OS; :meth:`restart` keeps both the port and the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from apps.payments.sandbox.acquirer import CHANNELS, DEFAULT_SECRET

ROOT = Path(__file__).resolve().parents[2]
# Loopback calls never go through an HTTP(S)_PROXY from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_LISTENING = re.compile(r"listening on (http://[\w.\-]+:(\d+))")


def closed_service_hours(now: datetime | None = None) -> str:
    """A ``service_hours`` value under which a channel is closed now and for the next hour."""
    now = now or datetime.now(UTC)
    opens, closes = now + timedelta(hours=1, minutes=1), now + timedelta(hours=2)
    return f"{opens:%H:%M}-{closes:%H:%M}"


class SandboxAcquirer:
    """``python -m apps.payments.sandbox.acquirer`` (or, with ``via_manage_py``, ``manage.py
    run_sandbox_acquirer``) in its own process, stopped with SIGTERM.

    ``url`` is known once :meth:`start` returned (it waits for ``/healthz``). ``faults`` (code →
    fault set) are applied at every start; ``seed`` fixes the fault dice (None: random)."""

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        secret: str = DEFAULT_SECRET,
        faults: dict[str, dict[str, Any]] | None = None,
        seed: int | None = None,
        db_path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        via_manage_py: bool = False,
    ) -> None:
        self._tmp = None if db_path else tempfile.mkdtemp(prefix="sandbox-acquirer-")
        self.db_path = Path(db_path) if db_path else Path(self._tmp) / "acquirer.sqlite3"
        self.webhook_url = webhook_url
        self.secret = secret
        self.faults = faults or {}
        self.seed = seed
        self.host = host
        self.port = port
        self.via_manage_py = via_manage_py
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    # --- Life cycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the sandbox acquirer has not been started")
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        if self.via_manage_py:
            command = [sys.executable, "manage.py", "run_sandbox_acquirer", "--verbosity", "0"]
        else:
            command = [sys.executable, "-m", "apps.payments.sandbox.acquirer", "--quiet"]
        command += ["--host", self.host, "--port", str(self.port), "--db", str(self.db_path)]
        command += ["--secret", self.secret]
        if self.webhook_url:
            command += ["--webhook-url", self.webhook_url]
        if self.faults:
            command += ["--faults", json.dumps(self.faults)]
        if self.seed is not None:
            command += ["--seed", str(self.seed)]
        return command

    def start(self, timeout: float = 30) -> SandboxAcquirer:
        """Start the process and return once ``/healthz`` answers. Raises RuntimeError (with
        the process's output) if it does not come up within ``timeout`` seconds."""
        if self.process and self.process.poll() is None:
            raise RuntimeError("the sandbox acquirer is already running")
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("SHOP_WEBHOOK_URL", "ACQUIRER_PORT", "ACQUIRER_WEBHOOK_SECRET")
        }
        env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
        self.output = []
        self.process = subprocess.Popen(
            self._command(),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        listening = threading.Event()

        def pump(stream: io.TextIOBase) -> None:
            for line in stream:
                self.output.append(line)
                match = _LISTENING.search(line)
                if match and not listening.is_set():
                    self.port = int(match.group(2))
                    listening.set()

        threading.Thread(target=pump, args=(self.process.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not listening.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("sandbox acquirer did not start:\n" + "".join(self.output))
        while True:
            try:
                if self.call("GET", "/healthz", timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("sandbox acquirer is not healthy:\n" + "".join(self.output))
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM (SIGKILL after ``timeout`` s); returns the exit code (None: never started)."""
        if not self.process:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode

    def restart(self) -> SandboxAcquirer:
        """Stop and start again on the same port and database file (faults set over HTTP are
        lost; the constructor's ``faults`` apply again)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and delete the temporary database (if this instance made it)."""
        self.stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> SandboxAcquirer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- HTTP -------------------------------------------------------------------------------

    def call(
        self, method: str, path: str, body: Any = None, *, timeout: float = 10
    ) -> tuple[int, Any]:
        """(HTTP status, decoded JSON answer, or the text for non-JSON answers). Connection
        errors and timeouts raise (OSError / http.client.HTTPException), as a client sees
        them."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with _OPENER.open(request, timeout=timeout) as answer:
                status, content_type, raw = (
                    answer.status,
                    answer.headers.get("Content-Type", ""),
                    answer.read(),
                )
        except urllib.error.HTTPError as error:
            status, content_type, raw = (
                error.code,
                error.headers.get("Content-Type", ""),
                error.read(),
            )
        text = raw.decode()
        return status, json.loads(text) if "json" in content_type else text

    def set_faults(self, channel: str, **faults: Any) -> dict[str, Any]:
        """Replace the channel's faults (keys not given are healthy) → the channel object.
        Raises ValueError on a 4xx answer."""
        status, body = self.call("PUT", f"/channels/{channel}/faults", faults)
        if status != 200:
            raise ValueError(f"faults refused ({status}): {body}")
        return body

    def reset(self) -> None:
        """Every channel healthy again (payments and refunds stay)."""
        for code in CHANNELS:
            self.set_faults(code)

    def payment(self, channel: str, payment_id: str) -> dict[str, Any]:
        """The channel's view of a payment (``{"status": "not_found"}`` if it has none)."""
        return self.call("GET", f"/channels/{channel}/payments/{payment_id}")[1]

    def settlement(self, channel: str, day: date) -> list[dict[str, str]]:
        """The settlement file's rows for that UTC day, as dicts of strings."""
        status, text = self.call("GET", f"/settlements/{channel}/{day.isoformat()}.csv")
        if status != 200:
            raise ValueError(f"settlement file refused ({status}): {text}")
        return list(csv.DictReader(io.StringIO(text)))
