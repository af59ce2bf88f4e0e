"""`manage.py serve_prod` (gunicorn, 2 uvicorn workers behind one port, a batch worker and
the sweeper) on the test PostgreSQL database and Redis, for the multi-process tests.

A request is pinned to one worker by stopping (SIGSTOP) the other while it is sent: a stopped
process cannot accept, so the shared socket hands the connection to the running one.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
from django.db import connection

from tests.live import ROOT, database_url, free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

# Short enough for the fault test: a killed worker's streams are swept within ~3 s.
CHECKPOINT_SECONDS = 0.3
STALE_STREAM_SECONDS = 2.0
SWEEP_SECONDS = 0.5


def scale_stack_available() -> bool:
    return os.environ.get("DATABASE_URL", "").startswith("postgres") and bool(
        os.environ.get("REDIS_URL")
    )


@dataclass
class ProdStack:
    url: str
    process: subprocess.Popen
    log: Path
    stopped: set[int] = field(default_factory=set)

    def arbiter(self) -> psutil.Process:
        for child in psutil.Process(self.process.pid).children():
            if "gunicorn" in " ".join(child.cmdline()):
                return child
        raise AssertionError("no gunicorn arbiter under serve_prod")

    def workers(self, count: int = 2, timeout: float = 60) -> list[int]:
        """The pids of `count` live web workers that answer (waits for restarts)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = sorted(
                child.pid
                for child in self.arbiter().children()
                if child.status() != psutil.STATUS_ZOMBIE
            )
            if len(pids) == count and all(self._answers(pid, pids) for pid in pids):
                return pids
            assert time.monotonic() < deadline, f"workers {pids}, wanted {count}; {self.log}"
            time.sleep(0.2)

    def _answers(self, pid: int, pids: list[int]) -> bool:
        try:
            with self.pinned(pid, pids):
                return httpx.get(f"{self.url}/healthz", timeout=3).status_code == 200
        except (httpx.HTTPError, psutil.Error):
            return False

    @contextlib.contextmanager
    def pinned(self, pid: int, pids: list[int] | None = None):
        """New connections made inside go to worker `pid` (the others are stopped)."""
        others = [other for other in (pids or self.workers()) if other != pid]
        for other in others:
            os.kill(other, signal.SIGSTOP)
        try:
            yield
        finally:
            for other in others:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(other, signal.SIGCONT)


@pytest.fixture(scope="module")
def prod_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    """The production command on the test database, for this module only: its batch worker
    and sweeper would otherwise work on later tests' rows (claim their batch items, roll
    their dashboard hours)."""
    if not scale_stack_available():
        pytest.skip("needs DATABASE_URL (PostgreSQL) and REDIS_URL")
    with django_db_blocker.unblock():
        assert connection.vendor == "postgresql"
        url_of_db = database_url()
    port = int(os.environ.get("TOKENFLOW_SCALE_TEST_PORT") or free_port())
    tmp = tmp_path_factory.mktemp("serve-prod")
    env = {
        **os.environ,
        "DATABASE_URL": url_of_db,
        "DJANGO_SETTINGS_MODULE": "tokenflow_site.settings",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
        "TOKENFLOW_CHECKPOINT_SECONDS": str(CHECKPOINT_SECONDS),
        "TOKENFLOW_STALE_STREAM_SECONDS": str(STALE_STREAM_SECONDS),
        "TOKENFLOW_SWEEP_SECONDS": str(SWEEP_SECONDS),
        "TOKENFLOW_BATCH_POLL_SECONDS": "0.2",
        "TOKENFLOW_BATCH_PROGRESS_SECONDS": "0.1",
        # Progress must come through the Redis channel layer, not the socket's DB poll.
        "TOKENFLOW_BATCH_WS_POLL_SECONDS": "600",
        "TOKENFLOW_CLASSIFIER": "tests.routing.fake_classifier.KeywordClassifier",
        "LOG_LEVEL": "WARNING",
    }
    (tmp / "metrics").mkdir()
    log = tmp / "serve_prod.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve_prod", "--port", str(port), "--workers", "2"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack = ProdStack(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"serve_prod exited; see {log}"
            try:
                if httpx.get(f"{stack.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"no /healthz in 120 s; see {log}"
            time.sleep(0.3)
        stack.workers()
        yield stack
    finally:
        for child in psutil.Process(process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.resume()  # nothing left stopped by a failed test
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def stack(prod_stack):
    """The stack with its 2 workers up (a previous test may have killed one)."""
    prod_stack.workers()
    return prod_stack
