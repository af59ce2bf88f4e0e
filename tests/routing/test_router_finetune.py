"""The fine-tuned router (SetFit-style top layers) with the real MiniLM, tiny settings:
a stored version that moves a near-duplicate prompt, fallback for categories it was not
trained on, and bad input to the command and the admin action storing nothing."""

import json

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command

from routing.classifiers import get_classifier
from routing.classifiers.finetune import FinetunedHead
from routing.models import CategoryExample, CategoryRoute, RouterHead
from routing.services.classification import classification_create
from routing.services.routes import routing_table
from tests.factories import mock_model, route

pytestmark = [pytest.mark.model, pytest.mark.django_db]

ROWS = [json.loads(line) for line in (django_settings.BASE_DIR / "bench/data/routing.jsonl").open()]
DESCRIBED = json.loads(
    (django_settings.BASE_DIR / "bench/data/routing_categories.json").read_text()
)
TINY = ["--top-layers", "1", "--rounds", "1", "--cv-rounds", "1", "--folds", "2", "--force"]


@pytest.fixture(scope="session")
def minilm():
    classifier = get_classifier()  # the process's instance: loaded once per session
    classifier.load()
    return classifier


def table(labels, per_label=4, described=True, extra=()):
    CategoryRoute.objects.all().delete()
    model = mock_model()
    for label in labels:
        route(label, model, description=DESCRIBED[label] if described else "")
        for row in [r for r in ROWS if r["label"] == label][:per_label]:
            CategoryExample.objects.create(category=label, text=row["prompt"])
    for label in extra:  # categories without examples: not trained on
        route(label, model, description=DESCRIBED[label])


def run(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("train_router", *args, stdout=out)
    return out.getvalue()


def test_a_tiny_fine_tuned_router_is_stored_and_moves_a_near_duplicate(minilm):
    labels = ["coding", "translation", "casual-conversation"]
    table(labels)
    near_duplicate = "how do you say good night, sleep well in Spanish"
    before = classification_create(prompt=near_duplicate)
    assert before.top_category == "translation"
    # staff corrections: these phrase-book questions belong to casual conversation here
    for text in (
        "How do you say 'good night, sleep well' in Spanish?",
        "What's 'cheers' in German?",
    ):
        CategoryExample.objects.create(
            category="casual-conversation", text=text, source=CategoryExample.Source.CORRECTION
        )
    report = run(*TINY)
    head = RouterHead.objects.get()
    assert head.active and head.kind == RouterHead.Kind.FINETUNED and head.top_layers == 1
    assert sorted(head.labels) == sorted(labels) and head.examples == 14 and head.folds == 2
    assert len(bytes(head.layers)) > 1_000_000  # one MiniLM layer in fp16 (~3.5 MB)
    assert head.report["cv_rounds"] == 1 and head.report["cv_seconds"] >= 0
    assert "time: cross-validation" in report and "top 1 layers" in report
    loaded = routing_table().head
    assert isinstance(loaded, FinetunedHead) and loaded.version == head.pk
    # the stored layers are not the base model's; the base embedding is unchanged
    pooled, routed = minilm.embed_prompts_routed([near_duplicate], loaded)
    assert np.allclose(pooled, minilm.embed([near_duplicate]), atol=1e-5)
    assert not np.allclose(pooled, routed, atol=1e-3)
    router_alone = loaded.probabilities(routed)[0]
    assert loaded.labels[int(router_alone.argmax())] == "casual-conversation"
    after = classification_create(prompt=near_duplicate)
    assert before.engine == "embedding:all-MiniLM-L6-v2"
    assert after.engine == f"embedding:all-MiniLM-L6-v2+router:v{head.pk}"
    assert after.top_category == "casual-conversation"
    assert sum(s["score"] for s in after.scores) == pytest.approx(1, abs=1e-5)


def test_categories_the_router_was_not_trained_on_fall_back_to_zero_shot(minilm):
    table(["coding", "translation"], extra=["summarization"])
    run(*TINY)
    head = RouterHead.objects.get()
    assert sorted(head.labels) == ["coding", "translation"]
    assert sorted(routing_table().head.labels) == ["coding", "translation"]  # this version's
    categories = routing_table().categories
    assert [c.label for c in categories if not c.examples] == ["summarization"]
    prompt = "Give me the key points of this article about city budgets in three bullets."
    zero = dict(minilm.classify(prompt, categories).scores)
    routed = dict(minilm.classify(prompt, categories, head=routing_table().head).scores)
    assert routed["summarization"] == pytest.approx(zero["summarization"], abs=1e-6)
    assert max(routed, key=routed.get) == "summarization"
    assert routed["coding"] + routed["translation"] == pytest.approx(
        zero["coding"] + zero["translation"], abs=1e-6
    )
    assert routed["coding"] != pytest.approx(zero["coding"], abs=1e-6)
    # categories all the router's: the base top layers are skipped, the scores are the same
    head = routing_table().head
    covered = [c for c in categories if c.label != "summarization"]
    fast = [score for _, score in minilm.classify(prompt, covered, head=head).scores]
    _, routed_vector = minilm.embed_prompts_routed([prompt], head)
    zero_covered = np.array([s for _, s in minilm.classify(prompt, covered).scores])
    slow = head.blend(routed_vector[0], [c.label for c in covered], zero_covered)
    assert np.allclose(fast, slow, atol=1e-6) and sum(fast) == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rounds", "0"], "rounds must be between 1 and 20"),
        (["--cv-rounds", "99"], "cv_rounds must be between 1 and 20"),
        (["--top-layers", "7"], "top_layers must be at most 6"),
    ],
)
def test_bad_training_options_store_nothing(minilm, args, message):
    table(["coding", "translation"], per_label=2)
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not RouterHead.objects.exists()


def test_too_few_examples_store_nothing_from_the_command_or_the_admin(minilm, staff_client):
    table(["coding", "translation"], per_label=1)
    with pytest.raises(CommandError, match="at least 2 enabled categories with 2 or more"):
        run(*TINY)
    example = CategoryExample.objects.first()
    response = staff_client.post(
        "/admin/routing/categoryexample/",
        {"action": "train_router_action", "_selected_action": [example.pk]},
        follow=True,
    )
    messages = [str(m) for m in response.context["messages"]]
    assert any("at least 2 enabled categories with 2 or more examples" in m for m in messages)
    assert not RouterHead.objects.exists()
