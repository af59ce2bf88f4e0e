"""A TCP fault proxy for tests: sits between TokenFlow and PostgreSQL, Redis or an upstream and
breaks the link on command.

It runs its own asyncio loop in a daemon thread, so synchronous tests drive it directly:

    proxy = FaultProxy("127.0.0.1", 5432).start()   # listens on 127.0.0.1:proxy.port
    proxy.drop()               # RST every open connection (SO_LINGER 0); new ones pass
    proxy.refuse()             # RST every open connection and every new one at once
    proxy.blackhole()          # new connections are accepted and never answered
    proxy.stall(5)             # no byte moves, either way, on any connection for 5 s
    proxy.reset_after(800)     # each connection is reset after 800 more bytes from the target
    proxy.passthrough()        # back to normal (blackholed connections get their RST)
    proxy.close()

Modes apply to new connections; `stall` also freezes the open ones (a network partition that
heals: what was sent arrives afterwards). `stats` counts accepted connections and resets.
"""

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

PASS, REFUSE, BLACKHOLE = "pass", "refuse", "blackhole"
CHUNK = 65536


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER on, timeout 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)  # hashed by identity (kept in a set)
class _Link:
    """One proxied connection: the client side, the target side, bytes left before a reset."""

    client: asyncio.StreamWriter
    target: asyncio.StreamWriter | None = None
    epoch: int = -1  # which reset_after() call `budget` belongs to
    budget: int | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)

    def abort(self) -> None:
        for task in self.tasks:
            task.cancel()
        _rst(self.client)
        if self.target is not None:
            _rst(self.target)


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0
    blackholed: int = 0
    resets: int = 0  # connections reset by drop()/refuse()/reset_after()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.mode = PASS
        self.stats = ProxyStats()
        self._links: set[_Link] = set()
        self._held: set[asyncio.StreamWriter] = set()  # blackholed connections
        self._flowing: asyncio.Event | None = None  # cleared while stalled
        self._stall_until = 0.0
        self._reset_epoch = 0
        self._reset_bytes: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> "FaultProxy":
        self._thread.start()
        self.port = self._call(self._start())
        return self

    async def _start(self) -> int:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.host, 0, backlog=512)
        return self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        self._drop_all()
        for writer in list(self._held):
            _rst(writer)
        self._held.clear()
        await self._server.wait_closed()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _call(self, coroutine, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _do(self, function, *args) -> None:
        """Run `function(*args)` on the proxy's loop and wait for it."""

        async def run():
            function(*args)

        self._call(run())

    # --- commands --------------------------------------------------------------------------

    def passthrough(self) -> None:
        """Forward new connections again, end a stall and any pending reset_after."""
        self._do(self._set, PASS, None)

    def drop(self) -> None:
        """RST every open connection (both sides); new connections still pass."""
        self._do(self._drop_all)

    def refuse(self) -> None:
        """RST every open connection, and every new one as soon as it is accepted."""
        self._do(self._set, REFUSE, None)
        self._do(self._drop_all)

    def blackhole(self) -> None:
        """Accept new connections and never answer them (open ones keep working)."""
        self._do(self._set, BLACKHOLE, None)

    def stall(self, seconds: float) -> None:
        """Freeze every byte on every connection (open and new) for `seconds`."""
        self._do(self._stall, seconds)

    def reset_after(self, nbytes: int) -> None:
        """Reset each connection (open and new) after `nbytes` more bytes from the target."""
        self._do(self._set, self.mode, nbytes)

    @property
    def open_connections(self) -> int:
        return len(self._links)

    # --- on the loop -----------------------------------------------------------------------

    def _set(self, mode: str, reset_bytes: int | None) -> None:
        self.mode = mode
        if mode == PASS and reset_bytes is None:
            self._stall_until = 0.0
            assert self._flowing is not None
            self._flowing.set()
            # A healed partition: the far side no longer knows held connections (RST).
            for held in list(self._held):
                _rst(held)
            self._held.clear()
        self._reset_epoch += 1
        self._reset_bytes = reset_bytes

    def _drop_all(self) -> None:
        for link in list(self._links):
            self.stats.resets += 1
            link.abort()
        self._links.clear()

    def _stall(self, seconds: float) -> None:
        assert self._flowing is not None
        self._stall_until = max(self._stall_until, time.monotonic() + seconds)
        self._flowing.clear()
        self._loop.call_later(seconds, self._unstall)

    def _unstall(self) -> None:
        assert self._flowing is not None
        if time.monotonic() >= self._stall_until - 0.001:
            self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self.mode == REFUSE:
            self.stats.refused += 1
            _rst(writer)
            return
        if self.mode == BLACKHOLE:
            self.stats.blackholed += 1
            self._held.add(writer)  # keep it open, read nothing, answer nothing
            return
        link = _Link(client=writer)
        self._links.add(link)
        try:
            assert self._flowing is not None
            await self._flowing.wait()
            target_reader, target_writer = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.CancelledError):
            self._links.discard(link)
            _rst(writer)
            return
        link.target = target_writer
        if link not in self._links:  # dropped while connecting
            link.abort()
            return
        link.tasks = [
            asyncio.create_task(self._pipe(reader, target_writer, link, upstream=False)),
            asyncio.create_task(self._pipe(target_reader, writer, link, upstream=True)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self._links.discard(link)
        for side in (writer, target_writer):
            side.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        *,
        upstream: bool,
    ) -> None:
        """Copy one direction; `upstream` = bytes from the target to the client."""
        assert self._flowing is not None
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                if upstream and self._reset_bytes is not None:
                    if link.epoch != self._reset_epoch:
                        link.epoch, link.budget = self._reset_epoch, self._reset_bytes
                    assert link.budget is not None
                    if len(data) >= link.budget:
                        writer.write(data[: link.budget])
                        with contextlib.suppress(ConnectionError):
                            await writer.drain()
                        self.stats.resets += 1
                        self._links.discard(link)
                        link.abort()
                        return
                    link.budget -= len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            link.abort()
        except asyncio.CancelledError:
            pass
