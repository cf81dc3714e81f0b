"""Several gunicorn instances on one host: none collides on a shared control socket."""

from __future__ import annotations

import os
import runpy
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import workers
from tests.workers import ROOT, wait_for

GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status
    except (urllib.error.URLError, OSError):
        return None


def _start(port: int, home: Path, log: Path, **extra: str) -> subprocess.Popen:
    env = workers.test_process_env(
        HOME=str(home),
        PORT=str(port),
        WEB_CONCURRENCY="1",
        DJANGO_SETTINGS_MODULE="config.settings.test",
        **extra,
    )
    env.pop("GUNICORN_CONTROL_SOCKET", None)
    env.pop("XDG_RUNTIME_DIR", None)  # gunicorn's default would otherwise live there
    with log.open("w") as out:
        return subprocess.Popen(
            [str(GUNICORN), "config.wsgi", "-c", "config/gunicorn.py"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def test_two_instances_share_a_host_without_a_control_socket_clash(tmp_path: Path) -> None:
    # Given one HOME for two gunicorn instances on their own ports
    home = tmp_path / "home"
    home.mkdir()
    ports = [_free_port(), _free_port()]
    logs = [tmp_path / f"gunicorn-{port}.log" for port in ports]
    processes = []
    try:
        # When both start
        for port, log in zip(ports, logs, strict=True):
            processes.append(_start(port, home, log))
        # Then both answer /healthz
        for port, process in zip(ports, processes, strict=True):
            wait_for(lambda p=port, pr=process: _healthz(p) == 200 or pr.poll() is not None)
            assert _healthz(port) == 200
    finally:
        for process in processes:
            _stop(process)
    # and neither logged a control-socket error, and the shared HOME holds no control socket
    for log in logs:
        text = log.read_text().lower()
        assert "control socket" not in text, text  # neither listening on one nor failing to
    assert not list(home.rglob("gunicorn.ctl"))


def _config(monkeypatch, **environ: str) -> dict:
    for name in ("WEB_CONCURRENCY", "WEB_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "config" / "gunicorn.py"))


def test_the_worker_model_is_gthread_sized_by_web_concurrency_and_web_threads(monkeypatch):
    defaults = _config(monkeypatch)
    assert (defaults["worker_class"], defaults["workers"], defaults["threads"]) == (
        "gthread",
        defaults["DEFAULT_WEB_CONCURRENCY"],
        defaults["DEFAULT_WEB_THREADS"],
    )
    sized = _config(monkeypatch, WEB_CONCURRENCY="3", WEB_THREADS="6")
    assert (sized["workers"], sized["threads"]) == (3, 6)
    with pytest.raises(ValueError, match="WEB_THREADS"):
        _config(monkeypatch, WEB_THREADS="0")


def test_the_web_process_starts_gthread_workers_and_answers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    port, log = _free_port(), tmp_path / "gunicorn.log"
    process = _start(port, home, log, WEB_THREADS="3")
    try:
        wait_for(lambda: _healthz(port) == 200 or process.poll() is not None)
        assert _healthz(port) == 200
    finally:
        _stop(process)
    assert "Using worker: gthread" in log.read_text()
