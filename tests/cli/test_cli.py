"""The `tokenflow` terminal client against a live daphne (subprocesses, mock models)."""

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from accounts.models import ApiKey
from batches.models import BatchJob
from routing.models import CategoryRoute, Generation
from tests.factories import mock_model, route
from tests.live import ROOT, daphne_server
from tests.live import database_url as live_database_url

pytestmark = pytest.mark.django_db(transaction=True)

SERVER_ENV = {
    "TOKENFLOW_CLASSIFIER": "tests.routing.fake_classifier.KeywordClassifier",
    "TOKENFLOW_CLASSIFIER_MODEL": "",
    "TOKENFLOW_COMPRESSOR": "tests.web.fakes.LongWordsCompressor",
    "TOKENFLOW_COMPRESSOR_MIN_TOKENS": "8",
    "TOKENFLOW_BATCH_WS_POLL_SECONDS": "0.2",
}


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock():
        database_url = live_database_url()
    log_dir = tmp_path_factory.mktemp("daphne-cli")
    with daphne_server(log_dir, database_url, SERVER_ENV) as url:
        yield {"url": url, "database_url": database_url}


@pytest.fixture
def cli_env(server, transactional_db, tmp_path):
    _row, raw = ApiKey.issue(name="cli")
    return {
        **os.environ,
        "TOKENFLOW_URL": server["url"],
        "TOKENFLOW_API_KEY": raw,
        "TOKENFLOW_VAR_DIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }


def tokenflow(env, *args, stdin: str | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "tokenflow_cli", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_console_script_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["tokenflow"] == "tokenflow_cli.main:main"
    assert project["tool"]["setuptools"]["packages"] == ["tokenflow_cli"]
    assert "install --quiet --no-deps -e ." in (ROOT / "Makefile").read_text()


def test_ask_streams_the_answer(cli_env):
    mock_model("mock/cli", response="Paris is the capital.", token_delay=0.01)
    result = tokenflow(cli_env, "ask", "--model", "mock/cli", "Capital of France?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Paris is the capital.\n"
    row = Generation.objects.get()
    assert row.status == "completed" and row.transport == "ws"
    assert f"generation #{row.pk}" in result.stderr and "tokens/s" in result.stderr


def test_ask_auto_prints_the_route_first(cli_env):
    coder = mock_model("mock/coder", response="Use a loop.")
    chatty = mock_model("mock/chatty", response="Hi!")
    route("coding", coder, description="code")
    route("chat", chatty, description="small talk")
    result = tokenflow(cli_env, "ask", "--model", "auto", "A coding question about loops")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Use a loop.\n"
    first = result.stderr.splitlines()[0]
    assert first.startswith("route: coding (0.90, keyword) -> mock/coder"), result.stderr
    assert "scores: coding 0.90, chat 0.10" in result.stderr


def test_ask_compress_and_prompt_from_stdin(cli_env):
    mock_model("mock/echo-cli")
    prompt = " ".join(f"word{i} is a considerably lengthy token sequence" for i in range(12))
    result = tokenflow(
        cli_env, "ask", "--model", "mock/echo-cli", "--compress", "0.5", "-", stdin=prompt
    )
    assert result.returncode == 0, result.stderr
    row = Generation.objects.select_related("compression").get()
    compression = row.compression
    assert compression is not None and compression.compressed_tokens < compression.original_tokens
    assert result.stdout == f"Echo: {compression.compressed_text}\n"
    assert (
        f"compressed: {compression.original_tokens} -> {compression.compressed_tokens} tokens"
        in result.stderr
    )


def test_ctrl_c_cancels_the_generation(cli_env):
    mock_model("mock/stall", response="one two three four", token_delay=0.01, stall_after=2)
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenflow_cli", "ask", "--model", "mock/stall", "go"],
        cwd=ROOT,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the stream is on its way
        row = Generation.objects.filter(status="streaming").first()
        if row is not None:
            break
        time.sleep(0.05)
    assert row is not None
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert stdout.startswith("one two")
    assert "cancelled (generation #" in stderr and "Traceback" not in stderr
    row.refresh_from_db()
    assert row.status == "cancelled" and row.output_text == "one two"


def test_classify(cli_env):
    CategoryRoute.objects.all().delete()  # only this test's two categories
    model = mock_model("mock/any")
    route("billing", model, description="invoices")
    route("support", model, description="help")
    result = tokenflow(cli_env, "classify", "A billing problem")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("billing  (confidence 0.90, keyword)")
    assert "support" in lines[2]
    custom = tokenflow(cli_env, "classify", "--categories", "cats,dogs", "--json", "I love dogs")
    assert json.loads(custom.stdout)["top_category"] == "dogs"


def test_errors_are_one_line(cli_env, server):
    result = tokenflow(cli_env, "ask", "--model", "nope", "hi")
    assert result.returncode == 1
    assert result.stderr.startswith("tokenflow: model_not_found: Model 'nope' is unknown.")
    bad = tokenflow({**cli_env, "TOKENFLOW_API_KEY": "tf_wrong"}, "classify", "x")
    assert bad.returncode == 1 and "401 unauthorized" in bad.stderr
    nokey = {k: v for k, v in cli_env.items() if k != "TOKENFLOW_API_KEY"}
    missing = tokenflow({**nokey, "TOKENFLOW_VAR_DIR": "/nonexistent"}, "classify", "x")
    # The project's own var/ may hold credentials from `make serve`; then they are used.
    if not (ROOT / "var" / "local-credentials.txt").exists():
        assert missing.returncode == 2 and "No API key" in missing.stderr


def test_key_from_local_credentials(cli_env, tmp_path):
    mock_model("mock/cred", response="ok")
    (tmp_path / "local-credentials.txt").write_text(
        f"username=admin\npassword=x\napi_key={cli_env['TOKENFLOW_API_KEY']}\n"
    )
    env = {k: v for k, v in cli_env.items() if k != "TOKENFLOW_API_KEY"}
    result = tokenflow(env, "ask", "-m", "mock/cred", "-q", "hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n" and result.stderr == ""


def test_batch_submit_and_watch(cli_env, server, tmp_path):
    mock_model("mock/batch", response="done", token_delay=0.05)
    lines = [
        {"custom_id": f"r{i}", "body": {"messages": [{"role": "user", "content": f"q{i}"}]}}
        for i in range(12)
    ]
    path = tmp_path / "input.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    submitted = tokenflow(
        cli_env, "batch", "submit", str(path), "--model", "mock/batch", "--concurrency", "2"
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.strip())
    assert BatchJob.objects.get(pk=job_id).total_items == 12
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "batch_worker", "--job", str(job_id), "--quiet"],
        cwd=ROOT,
        env={**cli_env, "DATABASE_URL": server["database_url"]},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        watched = tokenflow(cli_env, "batch", "watch", str(job_id), timeout=120)
    finally:
        worker.wait(timeout=60)
    assert watched.returncode == 0, watched.stderr
    bars = watched.stderr.splitlines()
    assert bars[-1].startswith("[" + "#" * 30 + "] 12/12 100.0%  completed"), bars
    assert len(bars) >= 2  # it moved: at least one bar before the last
    missing = tokenflow(cli_env, "batch", "watch", "999999")
    assert missing.returncode != 0


def test_module_is_importable_without_django():
    code = "import sys, tokenflow_cli.main; print('django' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(ROOT), capture_output=True, text=True
    )
    assert result.stdout.strip() == "False"
