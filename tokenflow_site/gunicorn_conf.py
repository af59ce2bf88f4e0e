"""gunicorn configuration of `make serve-prod` (docs/scale-out.md).

    gunicorn -c python:tokenflow_site.gunicorn_conf tokenflow_site.asgi:application

N uvicorn worker processes share one listening socket; the gunicorn arbiter restarts a
worker that dies (even by SIGKILL) or stops heart-beating for `timeout` seconds. Prometheus
metrics run in multiprocess mode: every process writes its samples under
PROMETHEUS_MULTIPROC_DIR and /metrics sums them (routing/views/metrics.py).

gunicorn reads WEB_CONCURRENCY (workers) itself; command-line flags override this file.
"""

import os
from pathlib import Path

bind = [f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"]
workers = int(os.environ.get("WEB_CONCURRENCY", 2))
worker_class = "tokenflow_site.uvicorn_worker.Worker"
# Each worker imports the app itself (no preload): no database connection or event loop is
# shared across a fork.
preload_app = False
# A worker that stops notifying the arbiter this long is killed and replaced; uvicorn
# notifies from its event loop, so this only fires on a stuck loop, never on a long stream.
timeout = 30
# SIGTERM: workers stop accepting and finish in-flight streams for this long.
graceful_timeout = 30
keepalive = 5
# The project's LOG_LEVEL: at INFO, uvicorn logs every connection (WebSocket open/close).
loglevel = os.environ.get("LOG_LEVEL", "INFO").lower()
# Hundreds of clients connecting at once (bench/concurrency.py) need more than 2048.
backlog = 4096
# No gunicornc control socket: one fixed path per user would collide between deployments
# (and test servers) on one host; restarts and scaling go through signals (HUP, TTIN, TTOU).
control_socket_disable = True

_var_dir = Path(os.environ.get("TOKENFLOW_VAR_DIR", Path(__file__).resolve().parents[1] / "var"))
# Set before any worker imports prometheus_client: its value class is chosen at import.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_var_dir / "prometheus"))


def on_starting(server):
    """Start from empty metric files: counters of a previous run must not be added."""
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def child_exit(server, worker):
    """A dead worker's live gauges (streams in flight) leave the sum; its counters stay."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
