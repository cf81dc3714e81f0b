"""gunicorn settings for the web process (Procfile: `gunicorn config.wsgi -c config/gunicorn.py`).

Command-line flags still override these. With PROMETHEUS_MULTIPROC_DIR set, a worker that
exits has its live-gauge files dropped, so /metrics on any worker stays right."""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
accesslog = "-"
# The combined format plus duration and the request id the shop echoed (shop.logs), so an
# access line joins the application's lines for the same request.
access_log_format = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms '
    "request_id=%({x-request-id}o)s"
)
# A request slower than this is a bug or a stuck dependency; every outbound call has its own,
# shorter timeout.
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
