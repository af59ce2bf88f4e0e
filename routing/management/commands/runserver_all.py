import os
import signal
import subprocess
import sys

from django.conf import settings
from django.core.management.base import BaseCommand

from routing.management.processes import processes_stop

SERVERS = ("uvicorn", "daphne")


def server_command(server: str, host: str, port: str) -> list[str]:
    """The ASGI server's command line for tokenflow_site.asgi:application.

    uvicorn (uvloop + httptools) is the default: same app, measured faster than daphne in
    one run of bench/peers.py (docs/performance.md). Both keep WebSocket messages up to
    twice TOKENFLOW_WS_MAX_MESSAGE_BYTES, so that clients get the consumers' clear
    `message_too_large` error below that size (beyond it the server drops the socket)."""
    ws_limit = str(2 * settings.TOKENFLOW_WS_MAX_MESSAGE_BYTES)
    app = "tokenflow_site.asgi:application"
    if server == "uvicorn":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--host",
            host,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--ws",
            "websockets-sansio",
            "--ws-max-size",
            ws_limit,
            # A deep accept backlog: hundreds of clients connect at once.
            "--backlog",
            "2048",
            # Its access log and its INFO lines print WebSocket URLs with their `?api_key=`
            # secrets: warnings and errors only.
            "--no-access-log",
            "--log-level",
            "warning",
            # Django and Channels do not speak the ASGI lifespan protocol.
            "--lifespan",
            "off",
            app,
        ]
    return [
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
        # daphne drops the connection beyond its own limit (1 MiB by default).
        "--websocket-max-message-size",
        ws_limit,
        "--websocket-max-frame-size",
        ws_limit,
        app,
    ]


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = (
        "Run the ASGI server (uvicorn, or daphne with --server daphne) plus the background "
        "processes of TOKENFLOW_SIDECARS; stop them together."
    )

    def add_arguments(self, parser):
        parser.add_argument("--port", default=os.environ.get("PORT", "8000"))
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--server", choices=SERVERS, default=SERVERS[0])

    def handle(self, *args, port, host, server, **options):
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        commands = [
            server_command(server, host, port),
            *[manage + list(sidecar) for sidecar in settings.TOKENFLOW_SIDECARS],
        ]
        processes = [subprocess.Popen(command) for command in commands]
        self.stdout.write(f"TokenFlow ({server}) on http://{host}:{port}/", ending="\n")
        # SIGTERM (a process manager, `kill`) stops the children too, as Ctrl-C does.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            processes[0].wait()
        except KeyboardInterrupt:
            pass
        finally:
            processes_stop(processes, timeout=10)
