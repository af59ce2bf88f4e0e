"""`manage.py runserver_all` (what `make serve` runs) stops its children with it."""

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.live import ROOT, database_url, free_port

pytestmark = pytest.mark.django_db(transaction=True)


def test_sigterm_stops_the_server_and_its_sidecars(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "tokenflow_site.settings",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "runserver_all", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        children = psutil.Process(process.pid).children()
        assert len(children) >= 2, children  # the ASGI server and the sweeper at least
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        _gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"left running after SIGTERM: {alive}"
    finally:
        for child in children:
            if child.is_running():
                child.kill()
        if process.poll() is None:
            process.kill()
