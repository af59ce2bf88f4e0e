"""Traffic adaptation (routing.services.adaptation): prototypes learnt from recent
prompts without labels, stored versioned, used for the label sets they cover."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import connection

from routing.classifiers import get_classifier
from routing.classifiers.base import Category
from routing.classifiers.cache import routes_changed
from routing.models import CategoryRoute, Classification, RouterAdaptation
from routing.services.adaptation import Adaptation, adapt_fit
from routing.services.classification import classification_create
from routing.services.routes import routing_table
from tests.factories import mock_model, route

ROWS = [json.loads(line) for line in (django_settings.BASE_DIR / "bench/data/routing.jsonl").open()]
LABELS = list(dict.fromkeys(r["label"] for r in ROWS))


def _normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_adapt_fit_learns_the_clusters_a_biased_zero_shot_misses():
    rng = np.random.default_rng(0)
    centres = _normalise(rng.normal(size=(2, 32)))
    y = np.repeat([0, 1], 100)
    x = _normalise(centres[y] * 3 + rng.normal(size=(200, 32)))
    # zero-shot: weakly informative and biased towards category 0
    zero_shot = 0.05 * np.eye(2)[y] + 0.04 * np.array([1.0, 0.0]) + rng.normal(0, 0.03, (200, 2))
    pool, scored = np.arange(0, 200, 2), np.arange(1, 200, 2)
    prototypes, center = adapt_fit(zero_shot[pool], x[pool])
    assert prototypes.shape == (2, 32) and center.shape == (32,)
    adaptation = Adaptation(("a", "b"), prototypes, center, 0.75)
    before = (zero_shot[scored].argmax(1) == y[scored]).mean()
    after = adaptation.adjust(zero_shot[scored], x[scored], ["a", "b"]).argmax(1) == y[scored]
    assert before < 0.8 and after.mean() > 0.95


def test_adaptation_covers_label_subsets_in_any_order_and_case():
    prototypes = np.eye(3, 4, dtype=np.float32)
    adaptation = Adaptation(("a", "B", "c"), prototypes, np.zeros(4, np.float32), 1.0)
    assert adaptation.covers(["b", "A"]) and adaptation.covers(["c", "a", "b"])
    assert not adaptation.covers(["a", "d"]) and not adaptation.covers(["a"])
    embedded = np.array([[0.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    adjusted = adaptation.adjust(np.zeros((1, 2)), embedded, ["c", "b"])
    assert adjusted[0].tolist() == pytest.approx([0.0, 0.5])  # (0 + 1 * cos) / (1 + 1)


@pytest.mark.django_db
def test_adapt_router_without_enough_traffic_stores_nothing():
    with pytest.raises(CommandError, match="at least 60 distinct recent single-label prompts"):
        call_command("adapt_router", stdout=io.StringIO())
    with pytest.raises(CommandError, match="min_prompts"):
        call_command("adapt_router", "--min-prompts", "1", stdout=io.StringIO())
    assert not RouterAdaptation.objects.exists()


@pytest.fixture(scope="module")
def minilm():
    classifier = get_classifier()
    classifier.load()
    return classifier


@pytest.mark.model
@pytest.mark.django_db
def test_adapting_to_traffic_improves_bare_labels_on_new_prompts(minilm, client, auth):
    CategoryRoute.objects.all().delete()
    bare = [Category(label) for label in LABELS]
    by_label = {label: [r for r in ROWS if r["label"] == label] for label in LABELS}
    pool = [r["prompt"] for label in LABELS for r in by_label[label][:18]]
    held_out = [r for label in LABELS for r in by_label[label][18:]]  # never in the pool
    for prompt in pool:  # traffic: classified with bare labels; nobody labels it
        classification_create(prompt=prompt, categories=bare)
    classification_create(prompt=pool[0], categories=bare, multi_label=True)  # not read
    zero_shot = minilm.classify_many([r["prompt"] for r in held_out], bare)

    out = io.StringIO()
    call_command("adapt_router", "--min-prompts", "50", stdout=out)
    row = RouterAdaptation.objects.get()
    assert row.active and row.labels == LABELS and row.prompts == len(pool)
    assert row.engine == "embedding:all-MiniLM-L6-v2" and row.dim == 384
    assert f"adaptation v{row.pk} (ACTIVE" in out.getvalue() and "108 unlabelled" in out.getvalue()
    adaptation = routing_table().adaptation_for(LABELS)
    assert adaptation is not None and adaptation.version == row.pk

    adapted = minilm.classify_many([r["prompt"] for r in held_out], bare, adaptation=adaptation)

    def accuracy(results):
        pairs = zip(results, held_out, strict=True)
        return np.mean([r.ranked()[0][0] == x["label"] for r, x in pairs])

    assert accuracy(adapted) >= accuracy(zero_shot) + 0.05, (accuracy(zero_shot), accuracy(adapted))
    for result in adapted:
        assert sum(s for _, s in result.scores) == pytest.approx(1, abs=1e-5)

    # the API uses it for any request whose labels it covers; not for others, nor multi-label
    def classify(labels, multi_label=False):
        return client.post(
            "/api/classify",
            json.dumps(
                {
                    "prompt": held_out[0]["prompt"],
                    "possible_categories": labels,
                    "multi_label": multi_label,
                }
            ),
            content_type="application/json",
            **auth,
        ).json()

    assert classify(LABELS)["engine"] == f"embedding:all-MiniLM-L6-v2+adapted:v{row.pk}"
    assert classify(["Coding", "translation"])["engine"].endswith(f"+adapted:v{row.pk}")
    assert classify(["coding", "weather"])["engine"] == "embedding:all-MiniLM-L6-v2"
    assert classify(LABELS, multi_label=True)["engine"] == "embedding:all-MiniLM-L6-v2"

    # a new run replaces the active adaptation of the same label set
    call_command("adapt_router", "--min-prompts", "50", "--rounds", "2", stdout=io.StringIO())
    newest = RouterAdaptation.objects.get(active=True)
    assert newest.pk != row.pk and newest.rounds == 2
    assert routing_table().adaptation_for(LABELS).version == newest.pk
    RouterAdaptation.objects.filter(pk=newest.pk).delete()  # deleting falls back cleanly
    assert routing_table().adaptation_for(LABELS) is None
    assert classify(LABELS)["engine"] == "embedding:all-MiniLM-L6-v2"


@pytest.mark.model
@pytest.mark.django_db
def test_the_routing_tables_label_set_is_adapted_on_all_recent_prompts(minilm, staff_client):
    CategoryRoute.objects.all().delete()
    model = mock_model()
    described = json.loads(
        (django_settings.BASE_DIR / "bench/data/routing_categories.json").read_text()
    )
    for label in LABELS:
        route(label, model, description=described[label])
    prompts = [r["prompt"] for r in ROWS[::2]]
    for prompt in prompts:
        classification_create(prompt=prompt)  # the table's categories
    corrected = Classification.objects.order_by("pk").first()
    corrected.feedback_category = ROWS[0]["label"]
    corrected.save()
    call_command("adapt_router", stdout=io.StringIO())
    row = RouterAdaptation.objects.get()
    assert sorted(row.labels) == sorted(LABELS) and row.prompts == len(prompts)
    assert {c["category"]: c["description"] for c in row.categories} == described
    assert row.report["corrected_prompts"] == 1
    assert sum(row.report["adapted_counts"].values()) == len(prompts)
    assert classification_create(prompt=ROWS[1]["prompt"]).engine.endswith(f"+adapted:v{row.pk}")

    # staff: the same from the admin's classification list; the old one is deactivated
    response = staff_client.post(
        "/admin/routing/classification/",
        {"action": "adapt_router_action", "_selected_action": [corrected.pk]},
        follow=True,
    )
    assert response.status_code == 200
    newest = RouterAdaptation.objects.get(active=True)
    assert newest.pk != row.pk and newest.created_by is not None
    assert f"Adaptation v{newest.pk}" in response.content.decode()
    response = staff_client.get(f"/admin/routing/routeradaptation/{newest.pk}/change/")
    assert response.status_code == 200 and "corrected_prompts" in response.content.decode()


CHILD = """
import sys
import django
django.setup()
from routing.services.classification import classification_create
for line in sys.stdin:
    print(classification_create(prompt=line.strip()).engine, flush=True)
"""


@pytest.mark.model
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    not (os.environ.get("DATABASE_URL", "").startswith("postgres") and os.environ.get("REDIS_URL")),
    reason="needs DATABASE_URL (PostgreSQL) and REDIS_URL",
)
def test_an_adaptation_reaches_another_process_without_a_restart(minilm):
    CategoryRoute.objects.all().delete()
    model = mock_model()
    for label in ("coding", "translation", "casual-conversation"):
        route(label, model)
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env={
            **os.environ,
            "DATABASE_URL": url,
            "DJANGO_SETTINGS_MODULE": "tokenflow_site.settings",
        },
        cwd=django_settings.BASE_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def ask_child(prompt: str) -> str:
        child.stdin.write(prompt + "\n")
        child.stdin.flush()
        return child.stdout.readline().strip()

    try:
        assert ask_child("How do I say thank you in German?") == "embedding:all-MiniLM-L6-v2"
        for row in [r for r in ROWS if r["label"] in {"coding", "translation"}][:20]:
            classification_create(prompt=row["prompt"])
        call_command("adapt_router", "--min-prompts", "20", stdout=io.StringIO())
        row = RouterAdaptation.objects.get(active=True)
        assert ask_child("How do I say thank you in German?").endswith(f"+adapted:v{row.pk}")
        RouterAdaptation.objects.filter(pk=row.pk).update(active=False)  # as the admin does
        routes_changed()
        assert ask_child("How do I say thank you in German?") == "embedding:all-MiniLM-L6-v2"
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
        assert child.returncode == 0, child.stderr.read()


@pytest.mark.django_db
def test_the_sweeper_re_adapts_when_due_and_not_more_often(monkeypatch, settings):
    """router_adapt_due (sweep_generations --every): runs router_adapt once the last
    adaptation or attempt is TOKENFLOW_ROUTER_ADAPT_SECONDS old; too little traffic is
    tried again only after that interval; 0 turns it off."""
    from datetime import timedelta

    from django.utils import timezone

    from routing.services import adaptation
    from tokenflow_site.errors import ApiError

    calls = []

    def adapt(**kwargs):
        calls.append(1)
        raise ApiError("not enough traffic", code="not_enough_traffic", status=400)

    monkeypatch.setattr(adaptation, "router_adapt", adapt)
    monkeypatch.setattr(adaptation, "_adapt_tried", {})
    settings.TOKENFLOW_ROUTER_ADAPT_SECONDS = 3600
    now = timezone.now()
    assert adaptation.router_adapt_due(now) == [] and calls == [1]  # never adapted: due
    assert adaptation.router_adapt_due(now + timedelta(minutes=30)) == [] and calls == [1]
    adaptation.router_adapt_due(now + timedelta(minutes=61))
    assert calls == [1, 1]
    settings.TOKENFLOW_ROUTER_ADAPT_SECONDS = 0
    adaptation.router_adapt_due(now + timedelta(days=2))
    assert calls == [1, 1]
