"""The default MiniLM classifier on real prompts, its calibration, and cache invalidation."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import cache

from routing.classifiers import get_classifier
from routing.classifiers.base import Category
from routing.classifiers.cache import VERSION_KEY, routes_version
from routing.models import CategoryRoute
from routing.seed import SEED_CATEGORIES
from tests.factories import mock_model, route

pytestmark = pytest.mark.model

SEED = [Category(label, spec[0]) for label, spec in SEED_CATEGORIES.items()]


@pytest.fixture(scope="session")
def minilm():
    """The process-wide default classifier, loaded once for the session."""
    classifier = get_classifier()
    classifier.load()
    return classifier


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("If a train leaves at 3pm going 60 mph, when does it arrive 180 miles away?", "reasoning"),
        ("Solve this logic puzzle: three boxes are all mislabeled...", "reasoning"),
        ("Call the weather API for Paris and return the result as JSON", "function-calling"),
        ("Translate 'good morning' into Spanish", "text-to-text"),
        ("Summarize this article in two sentences", "text-to-text"),
    ],
)
def test_clear_prompts_get_the_right_seed_category(minilm, prompt, expected):
    result = minilm.classify(prompt, SEED)
    (top, score), (_, second) = result.ranked()[:2]
    assert top == expected and score > second + 0.2
    assert sum(s for _, s in result.scores) == pytest.approx(1, abs=1e-5)


def test_multi_label_scores_are_independent_of_the_other_categories(minilm):
    prompt = "Summarize this article in two sentences"
    extra = Category("cooking", "recipes, baking and kitchen questions")
    single = dict(minilm.classify(prompt, SEED).scores)
    single_more = dict(minilm.classify(prompt, [*SEED, extra]).scores)
    multi = dict(minilm.classify(prompt, SEED, multi_label=True).scores)
    multi_more = dict(minilm.classify(prompt, [*SEED, extra], multi_label=True).scores)
    # Independent: a new category leaves the others' multi-label scores unchanged...
    for label, score in multi.items():
        assert multi_more[label] == pytest.approx(score, abs=1e-5)
    # ...while single-label scores are shared out and always sum to 1.
    assert single_more["text-to-text"] < single["text-to-text"]
    assert sum(single_more.values()) == pytest.approx(1, abs=1e-5)
    assert all(0 <= s <= 1 for s in multi_more.values())
    assert multi["text-to-text"] > 0.5 > multi_more["cooking"]
    assert max(multi, key=multi.get) == max(single, key=single.get)


@pytest.mark.django_db
def test_classify_api_uses_the_routing_table_by_default(client, auth, minilm):
    CategoryRoute.objects.all().delete()
    model = mock_model()
    for category in SEED:
        route(category.label, model, description=category.description)
    body = json.dumps({"prompt": "Translate this sentence into German: I like trains."})
    response = client.post("/api/classify", body, content_type="application/json", **auth)
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["top_category"] == "text-to-text" and data["engine"] == "embedding:all-MiniLM-L6-v2"
    assert {c["category"] for c in data["categories"]} == set(SEED_CATEGORIES)
    assert data["duration_ms"] > 0


@pytest.mark.django_db
def test_admin_edit_of_a_description_changes_the_next_classification(staff_client, auth, minilm):
    CategoryRoute.objects.all().delete()
    model = mock_model()
    alpha = route("alpha", model, description="baking bread, cakes and recipes")
    route("beta", model, description="car engines, tyres and oil changes")
    prompt = json.dumps({"prompt": "How long should I bake sourdough bread?"})
    ask = lambda: staff_client.post(  # noqa: E731
        "/api/classify", prompt, content_type="application/json", **auth
    ).json()
    assert ask()["top_category"] == "alpha"
    cached_before = set(minilm._cache)
    version = routes_version()
    response = staff_client.post(
        f"/admin/routing/categoryroute/{alpha.pk}/change/",
        {
            "category": "alpha",
            "description": "stock markets, shares and bonds",
            "model": model.pk,
            "priority": 100,
            "enabled": "on",
            "examples-TOTAL_FORMS": "0",  # the example-utterance inline
            "examples-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302
    assert routes_version() != version  # every process will drop its cached embeddings
    assert ask()["top_category"] == "beta"
    assert "alpha: baking bread, cakes and recipes" in cached_before
    assert "alpha: baking bread, cakes and recipes" not in minilm._cache


def test_a_version_change_from_another_process_drops_the_cache(minilm):
    minilm.classify("hello", [Category("greeting", "saying hi"), Category("farewell")])
    assert minilm._cache
    cache.set(VERSION_KEY, "changed-by-another-process", timeout=None)
    minilm.classify("hello", [Category("a"), Category("b")])
    assert minilm._cache_version == "changed-by-another-process"
    assert set(minilm._cache) == {"a", "b"}


def test_concurrent_classifications_are_batched_with_the_same_results(minilm):
    prompts = [f"Question {i}: translate 'cat number {i}' into French" for i in range(12)]
    prompts += [f"Solve {i} + {i} * 3 step by step" for i in range(12)]
    alone = {p: minilm.classify(p, SEED).scores for p in prompts}
    barrier = threading.Barrier(len(prompts))
    forward = minilm._forward
    sizes: list[int] = []

    def counting_forward(texts):
        sizes.append(len(texts))
        return forward(texts)

    def run(prompt):
        barrier.wait(timeout=60)
        return prompt, minilm.classify(prompt, SEED).scores

    minilm._forward = counting_forward
    try:
        with ThreadPoolExecutor(len(prompts)) as pool:
            together = dict(pool.map(run, prompts))
    finally:
        del minilm._forward
    for prompt, scores in alone.items():
        for (label, score), (other_label, other) in zip(scores, together[prompt], strict=True):
            assert label == other_label and other == pytest.approx(score, abs=1e-4)
    assert sum(sizes) == len(prompts) and max(sizes) > 1  # some prompts shared a pass
