"""Async-native versions of the stock middleware, so a request under ASGI stays on the
event loop.

Django runs a `MiddlewareMixin` hook under ASGI through `sync_to_async` (one thread hop
per `process_request` / `process_view` / `process_response`), and a sync-only middleware
(WhiteNoise) adapts the whole chain below it through a thread. Under hundreds of
concurrent streams those ~15 hops per request run on per-request threads that fight the
event loop for the GIL, and every chunk of every stream arrives late. The hooks below do no
I/O (headers, lazy objects, cookies), so they run inline; the few cases that can touch the
database (a modified session saved, messages stored, CSRF secrets kept in the session, a
static file served) still go to a thread, exactly as before. Behaviour is unchanged.

settings.MIDDLEWARE keeps the stock paths (Django's deploy checks look for them);
`AsyncMiddlewareASGIHandler` loads the async equivalent of each under ASGI.
"""

import asyncio
import itertools
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import (
    ThreadSensitiveContext,
    iscoroutinefunction,
    markcoroutinefunction,
    sync_to_async,
)
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.handlers.asgi import ASGIHandler
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from whitenoise.middleware import WhiteNoiseMiddleware

from tokenflow_site.errors import JsonErrorMiddleware


class InlineHooksMixin:
    """`MiddlewareMixin` whose async path calls its (I/O-free) hooks without a thread hop;
    `_request_needs_thread` / `_response_needs_thread` send a request to the thread anyway."""

    def _request_needs_thread(self, request) -> bool:
        return False

    def _response_needs_thread(self, request, response) -> bool:
        return False

    async def __acall__(self, request):
        response = None
        if hasattr(self, "process_request"):
            if self._request_needs_thread(request):
                response = await sync_to_async(self.process_request)(request)
            else:
                response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            if self._response_needs_thread(request, response):
                response = await sync_to_async(self.process_response)(request, response)
            else:
                response = self.process_response(request, response)
        return response


class AsyncSecurityMiddleware(InlineHooksMixin, SecurityMiddleware):
    pass


class AsyncCommonMiddleware(InlineHooksMixin, CommonMiddleware):
    pass


class AsyncXFrameOptionsMiddleware(InlineHooksMixin, XFrameOptionsMiddleware):
    pass


class AsyncAuthenticationMiddleware(InlineHooksMixin, AuthenticationMiddleware):
    """request.user stays lazy: nothing is read until a view asks for it."""


class AsyncSessionMiddleware(InlineHooksMixin, SessionMiddleware):
    """The session store is lazy; only saving a modified session needs the database."""

    def _response_needs_thread(self, request, response) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (
            getattr(session, "modified", False) or settings.SESSION_SAVE_EVERY_REQUEST
        )


class AsyncMessageMiddleware(InlineHooksMixin, MessageMiddleware):
    """Storing messages may read the session; a request that used none stores nothing."""

    def _response_needs_thread(self, request, response) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class AsyncCsrfViewMiddleware(InlineHooksMixin, CsrfViewMiddleware):
    """The CSRF secret lives in a cookie (inline) unless CSRF_USE_SESSIONS (thread)."""

    def _request_needs_thread(self, request) -> bool:
        return settings.CSRF_USE_SESSIONS

    def _response_needs_thread(self, request, response) -> bool:
        return settings.CSRF_USE_SESSIONS

    async def process_view(self, request, callback, callback_args, callback_kwargs):
        # An async process_view keeps Django from wrapping it in sync_to_async; the failure
        # view (a rejected request) and session-held secrets still run in a thread.
        if getattr(callback, "csrf_exempt", False) and not settings.CSRF_USE_SESSIONS:
            return None
        return await sync_to_async(super().process_view)(
            request, callback, callback_args, callback_kwargs
        )


class AsyncWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise is sync-only, which puts every request (and the middleware below it)
    through a thread. Async: a dict lookup inline, serving a file in a thread."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None, settings=settings):
        super().__init__(get_response, settings=settings)
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        if self.autorefresh:  # DEBUG: looks at the file system
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)


class AsyncJsonErrorMiddleware(InlineHooksMixin, JsonErrorMiddleware):
    pass


# A streaming response that carries this header (it never leaves the process) may yield one
# empty chunk: the response body ends there for the client, and the rest of the view's
# generator (the generation's final database write) runs after it. See EarlyBodyEnd.
BODY_ENDS_EARLY_HEADER = "x-tokenflow-body-ends-early"


class EarlyBodyEnd:
    """ASGI wrapper: lets a streaming view end the client's response before its generator
    finishes. Django sends a body message per chunk and the final one only when the
    generator is exhausted; a chat stream's last step after `[DONE]` is a database write
    that the client need not wait for (the row is final within milliseconds, and the
    request's task still runs it to the end, so a graceful shutdown waits for it).

    After the early end, a disconnect the server reports (uvicorn does so as soon as a
    response is complete) is not passed on: Django would cancel the view, and the write.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        armed = ended = False
        marker = BODY_ENDS_EARLY_HEADER.encode()

        async def send_early(message):
            nonlocal armed, ended
            if message["type"] == "http.response.start":
                headers = message.get("headers") or []
                kept = [(k, v) for k, v in headers if k.lower() != marker]
                if len(kept) != len(headers):
                    armed, message = True, {**message, "headers": kept}
            elif message["type"] == "http.response.body":
                if ended:
                    return
                if armed and not message.get("body") and message.get("more_body"):
                    ended, message = True, {"type": "http.response.body", "body": b""}
            await send(message)

        async def receive_early():
            message = await receive()
            if ended and message["type"] == "http.disconnect":
                await asyncio.Event().wait()  # until the app is done (and cancels this)
            return message

        return await self.app(scope, receive_early, send_early)


class SharedSyncThreads:
    """ASGI wrapper: HTTP requests run their thread-sensitive sync code (ORM calls, sync
    middleware, signals) on a small fixed pool of threads instead of one new thread (and one
    new database connection) per request, as Django's handler does by default.

    Hundreds of per-request threads contend for the GIL with the event loop, which then
    delivers every stream's chunks late; WebSocket consumers already share one thread. Each
    request is pinned to one pool thread (round robin), so its sync calls stay in order on
    one thread, as Django expects. `threads=0` keeps Django's default.
    """

    def __init__(self, app, *, threads: int) -> None:
        self.app = app
        self.executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"http-sync-{index}")
            for index in range(threads)
        ]
        self._next = itertools.count()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.executors:
            return await self.app(scope, receive, send)
        executor = self.executors[next(self._next) % len(self.executors)]
        async with ThreadSensitiveContext(executor=executor):
            return await self.app(scope, receive, send)


ASYNC_EQUIVALENTS = {
    "django.middleware.security.SecurityMiddleware": AsyncSecurityMiddleware,
    "whitenoise.middleware.WhiteNoiseMiddleware": AsyncWhiteNoiseMiddleware,
    "django.contrib.sessions.middleware.SessionMiddleware": AsyncSessionMiddleware,
    "django.middleware.common.CommonMiddleware": AsyncCommonMiddleware,
    "django.middleware.csrf.CsrfViewMiddleware": AsyncCsrfViewMiddleware,
    "django.contrib.auth.middleware.AuthenticationMiddleware": AsyncAuthenticationMiddleware,
    "django.contrib.messages.middleware.MessageMiddleware": AsyncMessageMiddleware,
    "django.middleware.clickjacking.XFrameOptionsMiddleware": AsyncXFrameOptionsMiddleware,
    "tokenflow_site.errors.JsonErrorMiddleware": AsyncJsonErrorMiddleware,
}


class AsyncMiddlewareASGIHandler(ASGIHandler):
    """Django's ASGI handler with each stock middleware of settings.MIDDLEWARE replaced by
    its async-native equivalent (same hooks, no thread hop per hook)."""

    def load_middleware(self, is_async: bool = False) -> None:
        stock = settings.MIDDLEWARE
        settings.MIDDLEWARE = [
            f"{cls.__module__}.{cls.__qualname__}" if (cls := ASYNC_EQUIVALENTS.get(path)) else path
            for path in stock
        ]
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = stock
