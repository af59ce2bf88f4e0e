"""Child processes of the serve commands (runserver_all, serve_prod)."""

import signal
import subprocess


def processes_stop(processes: list[subprocess.Popen], timeout: float) -> None:
    """SIGTERM every live one, then SIGKILL those still running after `timeout` seconds."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
