"""gunicorn settings for the web process (Procfile: `gunicorn config.wsgi -c config/gunicorn.py`).

Command-line flags still override these. With PROMETHEUS_MULTIPROC_DIR set, a worker that
exits has its live-gauge files dropped, so /metrics on any worker stays right.

Worker model: WEB_CONCURRENCY processes, each with WEB_THREADS threads (gthread). A card
payment spends most of its time waiting on the bank, and a sync worker would be pinned for all
of it; threads let one process serve other requests meanwhile. Sizing and the database
connection arithmetic: docs/web-workers.md."""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_WEB_CONCURRENCY = 2  # processes: about one per core
DEFAULT_WEB_THREADS = 8  # threads per process (docs/web-workers.md)


def web_model(environ: Mapping[str, str]) -> tuple[int, int]:
    """(processes, threads per process) for this environment: WEB_CONCURRENCY, WEB_THREADS."""
    processes = int(environ.get("WEB_CONCURRENCY") or DEFAULT_WEB_CONCURRENCY)
    threads = int(environ.get("WEB_THREADS") or DEFAULT_WEB_THREADS)
    if processes < 1 or threads < 1:
        raise ValueError("WEB_CONCURRENCY and WEB_THREADS must be at least 1")
    return processes, threads


bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers, threads = web_model(os.environ)
# gthread even with WEB_THREADS=1, so every deployment runs the one worker model the shop is
# tested and benchmarked under.
worker_class = "gthread"
# WEB_ACCESS_LOG: where access lines go ("-": stdout); empty turns them off (benchmarks).
accesslog = os.environ.get("WEB_ACCESS_LOG", "-") or None
# The combined format plus duration and the request id the shop echoed (shop.logs), so an
# access line joins the application's lines for the same request.
access_log_format = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms '
    "request_id=%({x-request-id}o)s"
)
# A worker process silent this long is killed and replaced. Under gthread that is a process
# stuck as a whole, not one slow request (docs/web-workers.md).
timeout = int(os.environ.get("WEB_TIMEOUT", "30"))
# gunicorn's control socket defaults to one path per user (~/.gunicorn/gunicorn.ctl), so a
# second instance on the host collides with the first. Off unless this instance names its own.
_control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "").strip()
control_socket_disable = not _control_socket
if _control_socket:
    control_socket = _control_socket


def child_exit(server, worker):  # gunicorn hook signature
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
