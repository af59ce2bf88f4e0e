"""Browser tests: Playwright driving Debian's Chromium against a live daphne.

No Chromium -> every browser test is skipped with one reason, unless
TOKENFLOW_REQUIRE_BROWSER=1 (set by .ci/run), which turns the skip into a failure.
Every page request goes through a route that lets only the live server through: a
request to any other host is aborted and fails the test.
"""

import os
import shutil
from pathlib import Path

import pytest
from django.contrib.sessions.backends.db import SessionStore

from tests.live import daphne_server
from tests.live import database_url as live_database_url

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "img"

# The live server's settings: deterministic classifier and compressor (no model load),
# quick dashboard pushes.
SERVER_ENV = {
    "TOKENFLOW_CLASSIFIER": "tests.routing.fake_classifier.KeywordClassifier",
    "TOKENFLOW_CLASSIFIER_MODEL": "",
    "TOKENFLOW_COMPRESSOR": "tests.web.fakes.LongWordsCompressor",
    "TOKENFLOW_COMPRESSOR_MIN_TOKENS": "8",
    "TOKENFLOW_DASHBOARD_LIVE_SECONDS": "0.3",
    "TOKENFLOW_DASHBOARD_STATS_SECONDS": "0.5",
    "TOKENFLOW_RETRY_ATTEMPTS": "1",
    "TOKENFLOW_BATCH_WS_POLL_SECONDS": "0.3",
}


@pytest.fixture(scope="session")
def _orm_under_playwright():
    """Playwright's sync API runs an event loop in the main thread for the rest of the
    session; the tests' own ORM calls (setup, assertions, flush) are plain sync code."""
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def chromium_path() -> str | None:
    """TOKENFLOW_CHROMIUM if set (None when that file does not exist), else `chromium`."""
    configured = os.environ.get("TOKENFLOW_CHROMIUM")
    if configured is not None:
        return configured if Path(configured).is_file() else None
    return shutil.which("chromium")


def require_browser() -> str:
    """Chromium's path; else skip the calling module (one line), or fail it when
    TOKENFLOW_REQUIRE_BROWSER=1 (CI)."""
    path = chromium_path()
    if path is None:
        reason = "no Chromium (apt-get install -y chromium): browser tests skipped"
        if os.environ.get("TOKENFLOW_REQUIRE_BROWSER") == "1":
            pytest.fail(f"TOKENFLOW_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    return path


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch arguments, pointed at Debian's Chromium."""
    path = require_browser()
    return {**browser_type_launch_args, "executable_path": path, "args": ["--no-sandbox"]}


@pytest.fixture(scope="session")
def web_server(django_db_setup, django_db_blocker, tmp_path_factory) -> str:
    with django_db_blocker.unblock():
        database_url = live_database_url()
    log_dir = tmp_path_factory.mktemp("daphne-web")
    with daphne_server(log_dir, database_url, SERVER_ENV) as url:
        yield url


@pytest.fixture
def browser_context_args(browser_context_args, web_server):
    return {
        **browser_context_args,
        "base_url": web_server,
        "viewport": {"width": 1360, "height": 900},
    }


@pytest.fixture
def staff_user(transactional_db, django_user_model):
    return django_user_model.objects.create_user(
        "staff", password="staff-pass-123", is_staff=True, is_superuser=True
    )


@pytest.fixture
def foreign_requests(context, web_server) -> list[str]:
    """Abort (and record) every request that is not for the live server."""
    seen: list[str] = []

    def guard(route):
        url = route.request.url
        if url.startswith(web_server + "/") or url.startswith("data:"):
            route.continue_()
        else:
            seen.append(url)
            route.abort()

    context.route("**/*", guard)
    return seen


@pytest.fixture
def staff_page(page, context, staff_user, web_server, foreign_requests):
    """A page whose context carries a logged-in staff session; fails the test if any
    request leaves the server, a static file is missing or the page logs an error."""
    session = SessionStore()
    session["_auth_user_id"] = str(staff_user.pk)
    session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    session["_auth_user_hash"] = staff_user.get_session_auth_hash()
    session.save()
    context.add_cookies([{"name": "sessionid", "value": session.session_key, "url": web_server}])
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "response",
        lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    page.problems = problems
    yield page
    assert not foreign_requests, f"requests left the server: {foreign_requests}"
    assert not problems, problems


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)
