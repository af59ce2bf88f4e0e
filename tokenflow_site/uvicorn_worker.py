"""The gunicorn worker class of `make serve-prod`: uvicorn (uvloop + httptools) per process.

`uvicorn-worker` is the maintained home of the former `uvicorn.workers.UvicornWorker`.
"""

from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):
    """UvicornWorker without the ASGI lifespan protocol (Channels' ProtocolTypeRouter has no
    `lifespan` handler; uvicorn's "auto" would log a failed startup in every process)."""

    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "lifespan": "off"}
