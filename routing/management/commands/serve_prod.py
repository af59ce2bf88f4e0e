import os
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from routing.management.processes import processes_stop


class Command(BaseCommand):
    help = (
        "Production: gunicorn with N uvicorn workers behind one port (tokenflow_site/"
        "gunicorn_conf.py), plus batch workers and the sweeper; a sidecar that dies is "
        "restarted, and everything stops together (docs/scale-out.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--port", default=os.environ.get("PORT", "8000"))
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument(
            "--workers",
            type=int,
            default=int(os.environ.get("WEB_CONCURRENCY", 2)),
            help="web processes (default WEB_CONCURRENCY, 2)",
        )
        parser.add_argument(
            "--batch-workers",
            type=int,
            default=int(os.environ.get("BATCH_WORKERS", 1)),
            help="batch worker processes (default BATCH_WORKERS, 1; 0 with "
            "TOKENFLOW_BATCH_WORKER=0)",
        )

    def handle(self, *args, port, host, workers, batch_workers, **options):
        if workers < 1 or batch_workers < 0:
            raise CommandError("--workers must be >= 1 and --batch-workers >= 0")
        if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") or not settings.REDIS_URL:
            self.stderr.write(
                "warning: several processes need DATABASE_URL=postgres://... and REDIS_URL "
                "(SQLite serializes writes; the in-memory layer, cache and rate limits are "
                "per process)"
            )
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        web = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "python:tokenflow_site.gunicorn_conf",
            "--bind",
            f"{host}:{port}",
            "--workers",
            str(workers),
            "tokenflow_site.asgi:application",
        ]
        sidecars = []
        for sidecar in settings.TOKENFLOW_SIDECARS:
            copies = batch_workers if sidecar[0] == "batch_worker" else 1
            sidecars += [manage + list(sidecar)] * copies
        # One metrics directory for the web workers and the sidecars (batch generations).
        env = {**os.environ}
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.VAR_DIR / "prometheus"))
        supervisor = Supervisor(web, sidecars, env, cwd=settings.BASE_DIR, log=self.stderr.write)
        supervisor.run(listening=(host, int(port)))


class Supervisor:
    """The web server plus sidecars: a sidecar that exits is restarted (at most once a
    second); when the web server exits or on SIGINT/SIGTERM, everything is stopped."""

    def __init__(self, web, sidecars, env, *, cwd, log):
        self.web_command, self.sidecar_commands = web, sidecars
        self.env, self.cwd, self.log = env, cwd, log
        self.stopping = False

    def _start(self, command):
        return subprocess.Popen(command, env=self.env, cwd=self.cwd)

    def _stop(self, *_):
        self.stopping = True

    def run(self, *, listening: tuple[str, int]) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        web = self._start(self.web_command)
        # Sidecars start once gunicorn listens: its on_starting hook (which empties the
        # metrics directory) has run by then, so it cannot delete a sidecar's files.
        deadline = time.monotonic() + 60
        while web.poll() is None and not self.stopping and time.monotonic() < deadline:
            try:
                socket.create_connection(listening, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        sidecars = [self._start(command) for command in self.sidecar_commands]
        try:
            while not self.stopping and web.poll() is None:
                time.sleep(1)
                for index, process in enumerate(sidecars):
                    if process.poll() is not None and not self.stopping:
                        self._forget_metrics(process.pid)
                        self.log(
                            f"{' '.join(self.sidecar_commands[index][2:])} (pid {process.pid}) "
                            f"exited with {process.returncode}; restarting"
                        )
                        sidecars[index] = self._start(self.sidecar_commands[index])
        finally:
            processes = [web, *sidecars]
            processes_stop(processes, timeout=35)

    def _forget_metrics(self, pid: int) -> None:
        directory = self.env.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, directory)
