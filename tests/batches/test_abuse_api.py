"""Issue 11, batch side, at job creation: templates, retry bounds, uploads, per-key quotas,
the hook allowlist (API, admin, Python client). Each test replays an attack first."""

import io
import json

import pytest
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.test import RequestFactory

from accounts.models import ApiKey
from batches.models import BatchItem, BatchJob
from batches.policy import RetryPolicy
from batches.services import batch_cancel, batch_create
from tests.factories import mock_model
from tokenflow_site.errors import ApiError

pytestmark = pytest.mark.django_db


@pytest.fixture
def model(db):
    return mock_model("mock/batch")


def item(custom_id: str, **body) -> dict:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return {"custom_id": custom_id, "body": body}


def post(client, auth, **payload):
    payload.setdefault("model", "mock/batch")
    payload.setdefault("items", [item("a")])
    return client.post("/api/batches", payload, content_type="application/json", **auth)


def error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    return response.json()["error"]


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def variables_item(custom_id: str, **variables) -> dict:
    return {"custom_id": custom_id, "body": {"variables": variables}}


# --- finding 1: prompt templates ---------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{x:>100000000}",  # a format spec: a 100 MB string before any size check
        "{x.__class__}",  # attribute walk
        "{x.__class__.__mro__}",
        "{x[0]}",  # index lookup
        "{x!r}",  # conversion
        "{0}",  # positional
        "unclosed {x",
    ],
)
def test_templates_accept_only_plain_name_fields(client, auth, model, template):
    response = post(client, auth, prompt_template=template, items=[variables_item("a", x="hello")])
    err = error(response, 400)
    assert (err["code"], err["field"]) == ("invalid_template", "prompt_template")
    assert BatchJob.objects.count() == 0
    with pytest.raises(ApiError) as caught:  # the Python client's path: the same check
        batch_create(
            items=[(None, variables_item("a", x="hello"))],
            model="mock/batch",
            prompt_template=template,
        )
    assert caught.value.code == "invalid_template"


def test_plain_templates_render(client, auth, model):
    response = post(
        client,
        auth,
        prompt_template="Translate {{literally}}: {text} ({n})",
        items=[variables_item("a", text="cat", n=3)],
    )
    assert response.status_code == 201, response.content
    (stored,) = BatchItem.objects.all()
    assert stored.params["messages"] == [
        {"role": "user", "content": "Translate {literally}: cat (3)"}
    ]
    response = post(client, auth, prompt_template="{text}", items=[variables_item("b", other="x")])
    assert error(response, 400)["code"] == "missing_variable"


def test_template_length_and_rendered_size_are_capped(client, auth, model, settings):
    settings.TOKENFLOW_BATCH_MAX_TEMPLATE_CHARS = 50
    err = error(post(client, auth, prompt_template="x" * 51), 413)
    assert (err["code"], err["field"]) == ("input_too_large", "prompt_template")
    # 40 fields x a 100-character variable = 4,000 characters: refused once past the cap,
    # before the whole text is built.
    settings.TOKENFLOW_MAX_INPUT_CHARS = 1000
    response = post(
        client, auth, prompt_template="{x}" * 16, items=[variables_item("a", x="y" * 100)]
    )
    err = error(response, 413)
    assert (err["code"], err["field"], err["index"]) == ("input_too_large", "variables", 0)
    assert "items[0]" in err["message"]
    assert BatchJob.objects.count() == 0


# --- finding 3: retry policy bounds --------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"backoff_base": 1e15}, "retry_policy.backoff_base"),
        ({"backoff_max": 1e9}, "retry_policy.backoff_max"),
        ({"timeout": 1e300}, "retry_policy.timeout"),
        ({"timeout": 0}, "retry_policy.timeout"),
        ({"retry_statuses": [500] * 101}, "retry_policy.retry_statuses"),
    ],
)
def test_retry_policy_numbers_have_upper_bounds(client, auth, model, policy, field):
    err = error(post(client, auth, retry_policy=policy), 400)
    assert err["field"] == field
    assert err["code"] == ("too_long" if "statuses" in field else "out_of_range"), err
    assert BatchJob.objects.count() == 0
    with pytest.raises(ApiError):  # the Python client's path
        batch_create(items=[(None, item("a"))], model="mock/batch", retry_policy=policy)


def test_max_attempts_is_bounded(client, auth, model):
    assert error(post(client, auth, max_attempts=101), 400)["field"] == "max_attempts"


def test_a_hand_edited_policy_is_clamped_at_run_time(settings):
    policy = RetryPolicy.for_job(
        max_attempts=10**9,
        options={"backoff_base": 1e15, "backoff_max": 1e300, "timeout": float("inf")},
    )
    assert policy.max_attempts == 100
    assert policy.timeout == settings.TOKENFLOW_BATCH_MAX_TIMEOUT
    delays = [policy.backoff(n, None) for n in (1, 50, 100)]
    assert all(0 <= d <= settings.TOKENFLOW_BATCH_MAX_BACKOFF for d in delays)
    assert policy.backoff(1, 1e300) == settings.TOKENFLOW_BATCH_MAX_BACKOFF  # Retry-After too


# --- finding 4: uploads --------------------------------------------------------------------------


def test_an_oversized_content_length_is_413_before_the_body_is_read(client, auth, model, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = jsonl(item("a"))
    # The declared length is past the cap; the body itself is small. Reading it to the
    # declared length would fail, so a 413 proves nothing was read.
    response = client.post(
        "/api/batches?model=mock/batch",
        body,
        content_type="application/jsonl",
        CONTENT_LENGTH="50000000",
        **auth,
    )
    err = error(response, 413)
    assert (err["code"], err["field"], err["limit"]) == ("input_too_large", "body", 1000)
    upload = io.BytesIO(body.encode())
    upload.name = "in.jsonl"
    response = client.post(
        "/api/batches", {"file": upload, "model": "mock/batch"}, CONTENT_LENGTH="50000000", **auth
    )
    assert error(response, 413)["field"] == "file"
    assert BatchJob.objects.count() == 0


@pytest.mark.parametrize("transport", ["jsonl", "multipart"])
def test_uploads_stop_at_the_item_limit_naming_the_line(client, auth, model, settings, transport):
    """Line 6 is not even JSON: the parse stops at line 4 (the first item beyond the
    limit), so the answer is the 413, not a 400 about line 6."""
    settings.TOKENFLOW_BATCH_MAX_ITEMS = 3
    body = jsonl(item("a"), item("b"), "", item("c"), item("d"), "{not json", item("e"))
    if transport == "jsonl":
        response = client.post(
            "/api/batches?model=mock/batch", body, content_type="application/jsonl", **auth
        )
    else:
        upload = io.BytesIO(body.encode())
        upload.name = "in.jsonl"
        response = client.post("/api/batches", {"file": upload, "model": "mock/batch"}, **auth)
    err = error(response, 413)
    assert (err["code"], err["line"], err["limit"]) == ("too_many_items", 5, 3)
    assert "line 5" in err["message"]
    assert BatchJob.objects.count() == 0


def test_jsonl_is_read_line_by_line():
    """The parser never asks the stream for more than one line (plus the cap) at a time."""
    from batches.jsonl import jsonl_rows

    class Stream(io.BytesIO):
        reads: list[int] = []

        def read(self, *args):  # a whole-body read is the bug being fixed
            raise AssertionError("read() called")

        def readline(self, size=-1):
            line = super().readline(size)
            Stream.reads.append(len(line))
            return line

    stream = Stream(jsonl(item("a"), item("b"), item("c")).encode())
    rows = jsonl_rows(stream, field="body")
    assert next(rows)[0] == 1 and Stream.reads == [Stream.reads[0]]
    assert [number for number, _ in rows] == [2, 3]


# --- finding 2: per-key quotas at creation --------------------------------------------------------


def test_active_jobs_per_key_are_capped(client, auth, api_key, model, settings):
    key, _raw = api_key
    key.batch_max_active_jobs = 2
    key.save()
    first = post(client, auth).json()
    post(client, auth, items=[item("b")])
    err = error(post(client, auth, items=[item("c")]), 429)
    assert (err["code"], err["limit"]) == ("too_many_active_jobs", 2)
    assert BatchJob.objects.count() == 2
    batch_cancel(job=BatchJob.objects.get(pk=first["id"]))  # finished jobs do not count
    assert post(client, auth, items=[item("c")]).status_code == 201
    # The global default applies to keys without their own value.
    other, raw = ApiKey.issue(name="other")
    settings.TOKENFLOW_BATCH_MAX_ACTIVE_JOBS_PER_KEY = 1
    other_auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    assert post(client, other_auth).status_code == 201
    assert error(post(client, other_auth), 429)["code"] == "too_many_active_jobs"


def test_job_concurrency_is_capped_by_the_keys_concurrency(client, auth, api_key, model):
    key, _raw = api_key
    key.batch_max_concurrency = 4
    key.save()
    err = error(post(client, auth, concurrency=5), 400)
    assert (err["field"], err["limit"]) == ("concurrency", 4)
    response = post(client, auth)  # the default (16) is lowered to the key's cap
    assert response.status_code == 201 and response.json()["concurrency"] == 4


def test_the_admin_edits_key_quotas(staff_client, api_key):
    key, _raw = api_key
    page = staff_client.get(f"/admin/accounts/apikey/{key.pk}/change/")
    assert b"batch_max_active_jobs" in page.content and b"batch_max_concurrency" in page.content


# --- finding 7 (worker part): hooks only from the allowlist ---------------------------------


@pytest.mark.parametrize(
    ("field", "path"),
    [("handler", "os.system"), ("executor", "subprocess.getoutput")],
)
def test_a_hook_typed_in_the_admin_is_refused_at_save(model, settings, field, path):
    job = batch_create(items=[(None, item("a"))], model="mock/batch")
    setattr(job, field, path)
    with pytest.raises(ValidationError) as caught:
        job.full_clean()
    assert field in caught.value.message_dict
    # The admin's own form says the same.
    from django.contrib.auth.models import User

    request = RequestFactory().post("/")
    request.user = User(is_staff=True, is_superuser=True)
    model_admin = admin.site._registry[BatchJob]
    form_class = model_admin.get_form(request, job)
    data = {name: getattr(job, name) for name in form_class.base_fields if hasattr(job, name)}
    data.update(retry_policy=json.dumps(job.retry_policy), parameters=json.dumps(job.parameters))
    data[field] = path
    form = form_class(data=data, instance=BatchJob.objects.get(pk=job.pk))
    assert not form.is_valid() and field in form.errors
    settings.TOKENFLOW_BATCH_HANDLERS = [path]
    form = form_class(data=data, instance=BatchJob.objects.get(pk=job.pk))
    assert form.is_valid(), form.errors


def test_the_python_client_gets_the_same_allowlist(model, settings):
    from batches.client import TokenFlowTask

    with pytest.raises(ApiError) as caught:
        TokenFlowTask(request_params=[{"prompt": "x"}], handler="os.system", model="mock/batch")
    assert (caught.value.status, caught.value.field) == (403, "handler")
    with pytest.raises(ApiError):
        batch_create(items=[(None, item("a"))], executor="os.system")


# --- finding 8 (input side): text no database can store ----------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"custom_id": "a\u0000b", "body": {"prompt": "x"}},
        {"custom_id": "a", "body": {"prompt": "x", "extra": {"k": "v\u0000"}}},
        {"custom_id": "a", "body": {"prompt": "x", "extra": {"k\u0000": 1}}},
    ],
)
def test_items_with_nul_characters_are_a_400_not_a_500(client, auth, model, bad):
    body = '{"custom_id": "ok", "body": {"prompt": "x"}}\n' + json.dumps(bad) + "\n"
    response = client.post(
        "/api/batches?model=mock/batch", body, content_type="application/jsonl", **auth
    )
    err = error(response, 400)
    assert (err["code"], err["line"]) == ("invalid_value", 2)
    assert BatchJob.objects.count() == 0
