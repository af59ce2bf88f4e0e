import os
import signal
import subprocess
import sys

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run daphne plus the background processes of TOKENFLOW_SIDECARS; stop them together."

    def add_arguments(self, parser):
        parser.add_argument("--port", default=os.environ.get("PORT", "8000"))
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))

    def handle(self, *args, port, host, **options):
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        commands = [
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                host,
                "-p",
                str(port),
                # Hundreds of sockets opening at once outlast daphne's 5 s handshake default.
                "--websocket_connect_timeout",
                "60",
                # daphne drops the connection beyond its own limit (1 MiB by default); keep
                # it above TOKENFLOW_WS_MAX_MESSAGE_BYTES so that clients get the consumers'
                # clear `message_too_large` error up to twice that size.
                "--websocket-max-message-size",
                str(2 * settings.TOKENFLOW_WS_MAX_MESSAGE_BYTES),
                "--websocket-max-frame-size",
                str(2 * settings.TOKENFLOW_WS_MAX_MESSAGE_BYTES),
                "tokenflow_site.asgi:application",
            ],
            *[manage + list(sidecar) for sidecar in settings.TOKENFLOW_SIDECARS],
        ]
        processes = [subprocess.Popen(command) for command in commands]
        try:
            processes[0].wait()
        except KeyboardInterrupt:
            pass
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
