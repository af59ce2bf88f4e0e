"""The pages in a real browser (Chromium via Playwright) against a live daphne."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from batches.models import BatchItem, BatchJob
from compression.models import Compression
from pipelines.models import Agent, Pipeline
from rollups.services import rollup_pending
from routing.models import Classification, Generation, ModelRanking
from tests.factories import mock_model, route
from tests.web.conftest import require_browser, screenshot

require_browser()  # at import: one skip line without Chromium, a failure in CI

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("_orm_under_playwright"),
]

LONG_PROMPT = (
    "Our quarterly infrastructure review found that the primary database cluster handled "
    "approximately 4200 transactions per second at peak, while the replication lag between "
    "regions stayed below 300 milliseconds. The team recommends upgrading the storage tier "
    "before the holiday season because capacity projections indicate saturation in March."
)


def _wait_row(pk: int, statuses: tuple[str, ...], timeout: float = 15) -> Generation:
    import time

    deadline = time.monotonic() + timeout
    while True:
        row = Generation.objects.get(pk=pk)
        if row.status in statuses or time.monotonic() > deadline:
            return row
        time.sleep(0.05)


def test_login_redirects_then_shows_the_playground(page, staff_user, web_server, foreign_requests):
    page.goto("/")
    expect(page).to_have_url(f"{web_server}/admin/login/?next=/")
    expect(page.locator("#site-name")).to_contain_text("TokenFlow")
    page.fill("#id_username", "staff")
    page.fill("#id_password", "staff-pass-123")
    page.click("input[type=submit]")
    expect(page).to_have_url(f"{web_server}/")
    expect(page.locator(".brand")).to_have_text("TokenFlow")
    expect(page.locator("#connection")).to_have_text("connected")
    assert not foreign_requests


def test_stream_with_the_mock_model(staff_page):
    mock_model("mock/slow", response="one two three four five six", token_delay=0.08)
    page = staff_page
    page.goto("/")
    expect(page.locator("#connection")).to_have_text("connected")
    page.select_option("#model", "mock/slow")
    page.fill("#system", "Be brief.")
    page.fill("#prompt", "Count to six")
    page.evaluate(
        """() => { window.seen = []; new MutationObserver(() => window.seen.push(
        document.getElementById("output").textContent)).observe(
        document.getElementById("output"), {childList: true, subtree: true}); }"""
    )
    page.click("#send")
    expect(page.locator("#output")).to_have_text("one two three four five six")
    # Tokens appeared one by one as they arrived, not all at the end.
    seen = [text for text in page.evaluate("window.seen") if text]
    assert seen[:3] == ["one", "one two", "one two three"], seen
    expect(page.locator("#stat-status")).to_have_text("completed (stop)")
    expect(page.locator("#stat-ttft")).to_contain_text("ms")
    expect(page.locator("#stat-speed")).to_contain_text("tokens/s")
    link = page.locator("#generation-link")
    generation_id = int(link.inner_text().removeprefix("Generation #"))
    row = Generation.objects.get(pk=generation_id)
    assert row.status == "completed" and row.transport == "ws" and row.api_key_id is None
    assert row.input_messages[0] == {"role": "system", "content": "Be brief."}
    link.click()
    expect(page.locator("#content h2, #content h1").first).to_be_visible()


def test_auto_fills_the_route_panel(staff_page):
    coder = mock_model("mock/coder", response="def add(a, b): return a + b", token_delay=0.02)
    chatty = mock_model("mock/chatty", response="Hello there!")
    remote = ModelRanking.objects.create(
        name="groq/needs-key", provider="groq", upstream_model="llama", rank=1
    )
    route("coding", remote, priority=300, description="Programming questions")
    route("coding", coder, priority=200, description="Programming questions")
    route("chat", chatty, description="Small talk")
    route("math", chatty, description="Arithmetic")
    page = staff_page
    page.goto("/")
    expect(page.locator("#connection")).to_have_text("connected")
    page.select_option("#model", "auto")
    page.fill("#prompt", "A coding question: how do I add two numbers in Python?")
    page.click("#send")
    expect(page.locator("#route-category")).to_have_text("coding")
    expect(page.locator("#route-model")).to_have_text("mock/coder")
    expect(page.locator("#route-scores .bar")).to_have_count(3)
    expect(page.locator("#route-scores .bar.top")).to_have_attribute("data-category", "coding")
    expect(page.locator("#route-skipped")).to_contain_text("groq/needs-key")
    expect(page.locator("#route-chain")).to_contain_text("groq/needs-key → mock/coder")
    expect(page.locator("#output")).to_have_text("def add(a, b): return a + b")
    expect(page.locator("#stat-status")).to_have_text("completed (stop)")
    screenshot(page, "playground.png")
    assert Classification.objects.get().top_category == "coding"


def test_stop_cancels_the_stream(staff_page):
    mock_model("mock/stall", response="alpha beta gamma delta", token_delay=0.02, stall_after=2)
    page = staff_page
    page.goto("/")
    expect(page.locator("#connection")).to_have_text("connected")
    page.select_option("#model", "mock/stall")
    page.fill("#prompt", "Go")
    page.click("#send")
    expect(page.locator("#output")).to_have_text("alpha beta")
    expect(page.locator("#stop")).to_be_enabled()
    page.click("#stop")
    expect(page.locator("#stat-status")).to_have_text("cancelled")
    expect(page.locator("#send")).to_be_enabled()
    row = _wait_row(Generation.objects.get().pk, ("cancelled",))
    assert row.status == "cancelled" and row.output_text == "alpha beta"


def test_compression_diff_preview_and_in_a_generation(staff_page):
    mock_model("mock/echo-c")
    page = staff_page
    page.goto("/")
    expect(page.locator("#connection")).to_have_text("connected")
    page.fill("#prompt", LONG_PROMPT)
    page.check("#compress")
    page.fill("#compress_value", "0.5")
    page.click("#compress-only")  # POST /api/compress with the session and its CSRF token
    expect(page.locator("#compression-summary")).to_contain_text("tokens")
    kept = page.locator("#compression-diff .kept")
    dropped = page.locator("#compression-diff .dropped")
    expect(kept.first).to_be_visible()
    expect(dropped.first).to_be_visible()
    compression = Compression.objects.get()
    assert kept.count() == len(compression.compressed_text.split())
    assert kept.count() + dropped.count() == len(LONG_PROMPT.split())
    assert compression.compressed_tokens < compression.original_tokens
    expect(page.locator("#compression-summary")).to_contain_text(
        f"{compression.original_tokens} → {compression.compressed_tokens} tokens"
    )

    # The same options on a generation: the model gets the compressed prompt.
    page.select_option("#model", "mock/echo-c")
    page.click("#send")
    expect(page.locator("#stat-status")).to_have_text("completed (stop)")
    generation = Generation.objects.get()
    assert generation.compression_id is not None
    expect(page.locator("#output")).to_have_text("Echo: " + generation.compression.compressed_text)
    expect(page.locator("#compression-diff .dropped").first).to_be_visible()


def test_fan_out_with_one_failing_agent(staff_page):
    # Six tokens 0.3 s apart: the analyst's panel fills in while it still runs.
    good = mock_model("mock/good", response="Facts: it depends on the team.", token_delay=0.3)
    bad = mock_model("mock/bad", fail_before_first=400)
    aggregator = mock_model("mock/agg", response="Combined answer.", token_delay=0.02)
    pipeline = Pipeline.objects.create(name="panel", aggregator_model=aggregator)
    Agent.objects.create(pipeline=pipeline, name="analyst", model=good, order=0)
    Agent.objects.create(pipeline=pipeline, name="critic", model=bad, order=1)
    page = staff_page
    page.goto("/")
    expect(page.locator("#connection")).to_have_text("connected")
    page.check("input[name=mode][value=fanout]")
    page.select_option("#pipeline", "panel")
    page.fill("#prompt", "Rust or Go?")
    page.click("#send")
    page.wait_for_function(  # streamed text in a panel that has not finished yet
        """() => {
            const panel = document.querySelector('.agent[data-agent="analyst"]');
            return panel && panel.classList.contains("running")
                && panel.querySelector(".text").textContent.startsWith("Facts:");
        }""",
        timeout=5000,
    )
    expect(page.locator('.agent[data-agent="analyst"]')).to_have_class("agent done")
    expect(page.locator('.agent[data-agent="analyst"] .text')).to_have_text(
        "Facts: it depends on the team."
    )
    expect(page.locator('.agent[data-agent="critic"]')).to_have_class("agent failed")
    expect(page.locator('.agent[data-agent="critic"] .state')).to_contain_text("failed")
    expect(page.locator('.agent[data-agent="critic"] .reason')).not_to_be_empty()
    expect(page.locator("#output")).to_have_text("Combined answer.")
    expect(page.locator("#stat-status")).to_have_text("completed (stop)")


def test_classify_only(staff_page):
    mock_model("mock/any")
    route("billing", ModelRanking.objects.get(name="mock/any"), description="Invoices")
    route("support", ModelRanking.objects.get(name="mock/any"), description="Help")
    page = staff_page
    page.goto("/")
    page.check("input[name=mode][value=classify]")
    page.fill("#prompt", "A billing question about my invoice")
    page.click("#send")
    expect(page.locator("#route-category")).to_have_text("billing")
    expect(page.locator("#route-scores .bar")).to_have_count(2)
    assert Classification.objects.get().top_category == "billing"


def _seed_dashboard() -> BatchJob:
    now = timezone.now()
    models = ["mock/alpha", "mock/beta"]
    for name in models:
        mock_model(name)
    category = Classification.objects.create(
        engine="keyword", top_category="coding", confidence=0.8, scores=[]
    )
    rows = []
    for i in range(240):
        rows.append(
            Generation(
                model_name=models[i % 2],
                provider="mock",
                status="failed" if i % 17 == 0 else "completed",
                prompt_tokens=20 + i % 7,
                completion_tokens=40 + i % 11,
                ttft_ms=50 + (i % 13) * 9,
                duration_ms=400 + (i % 29) * 20,
                classification=category if i % 3 == 0 else None,
                cost_usd=Decimal("0.01"),
                cache="exact" if i % 5 == 0 else "",
                cost_saved_usd=Decimal("0.01") if i % 5 == 0 else None,
            )
        )
    created = Generation.objects.bulk_create(rows)
    for index, row in enumerate(created):
        Generation.objects.filter(pk=row.pk).update(created_at=now - timedelta(minutes=5 * index))
    for ratio in (0.4, 0.5, 0.6):
        Compression.objects.create(
            original_text="x", compressed_text="x", original_tokens=1000,
            compressed_tokens=int(1000 * ratio), ratio=ratio, engine="fast",
        )  # fmt: skip
    job = BatchJob.objects.create(name="nightly", model="mock/alpha", status="running")
    BatchItem.objects.bulk_create(
        BatchItem(job=job, custom_id=str(i), params={}, status="completed" if i < 30 else "pending")
        for i in range(100)
    )
    BatchJob.objects.filter(pk=job.pk).update(total_items=100)
    return job


def test_dashboard_renders_charts_and_live_data(staff_page):
    job = _seed_dashboard()
    assert rollup_pending() >= 19  # the closed hours come from the rollup tables
    page = staff_page
    page.goto("/dashboard/?range=day")
    expect(page.locator("#live-status")).to_have_text("live")
    # Every chart drew from the pushed aggregates (uPlot renders a canvas per chart).
    expect(page.locator(".chart .uplot canvas")).to_have_count(6)
    expect(page.locator("#card-requests")).not_to_have_text("–")
    requests_shown = int(page.locator("#card-requests").inner_text().replace(",", ""))
    assert (
        requests_shown
        == Generation.objects.filter(created_at__gte=timezone.now() - timedelta(days=1)).count()
    )
    expect(page.locator("#card-saved")).to_contain_text("50.0 %")
    expect(page.locator("#card-cost")).to_have_text("$2.40")
    expect(page.locator("#card-cache")).to_have_text("48 · 20.0 %")
    expect(page.locator("#card-cache-detail")).to_have_text(
        "cache hits: 48 exact, 0 semantic, $0.480 saved"
    )
    expect(page.locator("#routing-table")).to_contain_text("coding")
    bar = page.locator(f'#batches tr[data-job="{job.pk}"]')
    expect(bar).to_contain_text("30 / 100")
    # A generation starts and the batch moves: both are pushed, the page does not reload.
    live = Generation.objects.create(model_name="mock/alpha", provider="mock", status="streaming")
    expect(page.locator(f'#in-flight tr[data-generation="{live.pk}"]')).to_be_visible()
    BatchItem.objects.filter(job=job, custom_id__in=[str(i) for i in range(30, 60)]).update(
        status="completed"
    )
    expect(bar).to_contain_text("60 / 100")
    screenshot(page, "dashboard.png")
    page.click("#ranges a[data-range=hour]")
    expect(page.locator("#ranges a[aria-current]")).to_have_text("Last hour")
    expect(page.locator("#card-requests")).not_to_have_text(str(requests_shown))


def test_api_docs_fully_rendered(staff_page):
    page = staff_page
    page.goto("/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("TokenFlow API")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    assert page.locator(".swagger-ui .opblock").count() > 10


def test_no_page_requests_another_host(staff_page, foreign_requests):
    page = staff_page
    for path in ("/", "/dashboard/", "/api/docs/", "/api/redoc/", "/admin/"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
    # Redoc's menu (with the logo it would fetch from its CDN) is fully drawn.
    page.goto("/api/redoc/")
    expect(page.locator("text=API docs by Redocly")).to_be_visible()
    page.wait_for_timeout(500)
    assert not foreign_requests


def test_admin_polish_units_links_and_a_moving_batch_bar(staff_page):
    from routing.models import Prompt

    model = mock_model("mock/admin")
    chat = route("chat", model, description="Small talk about the weather " * 10)
    prompt = Prompt.objects.create(text="Tell me about rain " * 30)
    classification = Classification.objects.create(
        prompt=prompt, engine="keyword", top_category="chat", confidence=0.8123, scores=[]
    )
    generation = Generation.objects.create(
        prompt=prompt, classification=classification, model=model, model_name=model.name,
        provider="mock", status="completed", prompt_tokens=1234, completion_tokens=56,
        ttft_ms=4627.07381, duration_ms=61234.5,
    )  # fmt: skip
    page = staff_page
    page.goto("/admin/")
    expect(page.locator("#site-name")).to_have_text("TokenFlow")
    expect(page).to_have_title("Gateway records and routing tables | TokenFlow admin")
    page.goto("/admin/routing/categoryroute/")
    cell = page.locator("td.field-short_description").first
    expect(cell).to_contain_text("…")
    assert len(cell.inner_text()) <= 70 and chat.description not in page.content()
    page.goto("/admin/routing/generation/")
    row = page.locator("#result_list tbody tr").first
    expect(row.locator("td.field-ttft")).to_have_text("4,627 ms")
    expect(row.locator("td.field-duration")).to_have_text("61.2 s")
    expect(row.locator("td.field-tokens_in")).to_have_text("1,234 tok")
    row.locator("td.field-links a", has_text="classification").click()
    expect(page).to_have_url(
        f"{page.url.split('/admin/')[0]}/admin/routing/classification/{classification.pk}/change/"
    )
    expect(page.locator(".field-generations_link a")).to_be_visible()
    page.locator(".field-generations_link a").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    assert str(generation.pk) in page.locator("#result_list tbody tr th").inner_text()

    job = BatchJob.objects.create(name="moving", model="mock/admin", status="running")
    BatchItem.objects.bulk_create(
        BatchItem(job=job, custom_id=str(i), params={}, status="pending") for i in range(10)
    )
    BatchJob.objects.filter(pk=job.pk).update(total_items=10)
    page.goto("/admin/batches/batchjob/")
    label = page.locator(f'[data-batch-job="{job.pk}"] .tf-label')
    expect(label).to_contain_text("0 / 10 (0%)")
    BatchItem.objects.filter(job=job, custom_id__in=["0", "1", "2", "3"]).update(status="completed")
    expect(label).to_contain_text("4 / 10 (40%)")  # pushed over ws/batches/<id>/, no reload
