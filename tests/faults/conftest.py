"""A live TokenFlow (daphne in a subprocess) whose PostgreSQL, Redis and upstream links all go
through fault proxies, so a scenario can break one of them and watch what clients see.

The test process itself reads and writes the test database directly (not through the proxy),
so it can check rows while TokenFlow's own link is down.
"""

import asyncio
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from django.db import connection

from bench.mock_upstream import MockUpstream
from tests.faults.proxy import FaultProxy
from tests.live import daphne_server

ROOT = Path(__file__).resolve().parents[2]
# The live server's upstream read timeout: short, so a stalled upstream fails within a test.
UPSTREAM_READ_TIMEOUT = 2.0


class ThreadedUpstream:
    """bench/mock_upstream.py's server on its own event loop thread."""

    def __init__(self) -> None:
        self.server = MockUpstream(chunks=10, gap=0.01)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> int:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass
class Stack:
    url: str  # the live TokenFlow
    postgres: FaultProxy
    redis: FaultProxy
    upstream: FaultProxy
    upstream_server: MockUpstream
    log: Path

    @property
    def upstream_base_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream.port}/v1"

    def heal(self) -> None:
        for proxy in (self.postgres, self.redis, self.upstream):
            proxy.passthrough()


def _proxied_database_url(port: int) -> str:
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@127.0.0.1:{port}/{db['NAME']}"


def _proxied_redis_url(redis_url: str, port: int) -> str:
    parts = urlsplit(redis_url)
    auth = parts.netloc.rpartition("@")[0]
    return f"{parts.scheme}://{auth + '@' if auth else ''}127.0.0.1:{port}{parts.path}"


def wait_healthy(url: str, timeout: float) -> float:
    """Seconds until /healthz answers 200 (AssertionError after `timeout`)."""
    started = time.monotonic()
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        assert time.monotonic() - started < timeout, f"/healthz not 200 within {timeout} s"
        time.sleep(0.1)


@pytest.fixture(scope="session")
def fault_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    """The proxied live server, shared by the fault scenarios (each heals the links after)."""
    with django_db_blocker.unblock():
        assert connection.vendor == "postgresql"
        db = connection.settings_dict
        pg_target = (db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))
    redis_url = os.environ["REDIS_URL"]
    redis_parts = urlsplit(redis_url)
    upstream = ThreadedUpstream()
    upstream_port = upstream.start()
    proxies = [
        FaultProxy(*pg_target).start(),
        FaultProxy(redis_parts.hostname or "127.0.0.1", redis_parts.port or 6379).start(),
        FaultProxy("127.0.0.1", upstream_port).start(),
    ]
    pg_proxy, redis_proxy, upstream_proxy = proxies
    log_dir = tmp_path_factory.mktemp("daphne-faults")
    env = {
        "REDIS_URL": _proxied_redis_url(redis_url, redis_proxy.port),
        "TOKENFLOW_UPSTREAM_READ_TIMEOUT": str(UPSTREAM_READ_TIMEOUT),
        "TOKENFLOW_UPSTREAM_CONNECT_TIMEOUT": "2",
        "TOKENFLOW_ALLOW_PRIVATE_UPSTREAMS": "1",  # the mock upstream is on loopback
        "LOG_LEVEL": "WARNING",
    }
    log_path = log_dir / "daphne.log"
    try:
        with daphne_server(log_dir, _proxied_database_url(pg_proxy.port), env) as url:
            try:
                yield Stack(url, pg_proxy, redis_proxy, upstream_proxy, upstream.server, log_path)
            finally:
                for proxy in proxies:
                    proxy.passthrough()  # let daphne shut down cleanly
    finally:
        for proxy in proxies:
            proxy.close()
        upstream.close()


@pytest.fixture
def stack(fault_stack):
    """The live stack with every link healthy before and after the test."""
    fault_stack.heal()
    wait_healthy(fault_stack.url, 30)
    yield fault_stack
    fault_stack.heal()


@pytest.fixture(scope="session", autouse=True)
def _close_stray_connections(django_db_setup, django_db_blocker):
    """End the live server's sessions so pytest-django can drop the test database."""
    yield
    with django_db_blocker.unblock():
        if connection.vendor != "postgresql":
            return
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
