"""The learning router with the real MiniLM: examples, train_router, eval_router, and a
correction reaching another process (PostgreSQL + Redis)."""

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection

from routing.classifiers import get_classifier
from routing.classifiers.base import Category
from routing.models import CategoryExample, CategoryRoute, RouterHead
from tests.factories import mock_model, route

pytestmark = pytest.mark.model

ROWS = [json.loads(line) for line in (django_settings.BASE_DIR / "bench/data/routing.jsonl").open()]
DESCRIBED = json.loads(
    (django_settings.BASE_DIR / "bench/data/routing_categories.json").read_text()
)


@pytest.fixture(scope="session")
def minilm():
    classifier = get_classifier()
    classifier.load()
    return classifier


def test_examples_move_a_prompt_to_their_category(minilm):
    prompt = "ok cool, catch you tomorrow then"
    bare = [Category("small-talk"), Category("scheduling")]
    with_examples = [
        Category("small-talk", "", ("see you later!", "bye, talk soon", "nice chatting")),
        Category("scheduling", "", ("book a meeting on monday", "move my 3pm call")),
    ]
    before = dict(minilm.classify(prompt, bare).scores)
    after = dict(minilm.classify(prompt, with_examples).scores)
    assert after["small-talk"] > before["small-talk"] and after["small-talk"] > 0.5


@pytest.mark.django_db
def test_train_router_stores_a_versioned_head_used_for_the_table(minilm, client, auth, tmp_path):
    CategoryRoute.objects.all().delete()
    model = mock_model()
    labels = ["coding", "translation", "casual-conversation"]
    for label in labels:
        route(label, model, description=DESCRIBED[label])
        for row in [r for r in ROWS if r["label"] == label][:12]:
            CategoryExample.objects.create(category=label, text=row["prompt"])
    out = tmp_path / "out.txt"
    with out.open("w") as handle:
        call_command("train_router", "--folds", "3", "--force", "--kind", "linear", stdout=handle)
    report = out.read_text()
    head = RouterHead.objects.get()
    assert head.active and sorted(head.labels) == sorted(labels)
    assert head.examples == 36 and head.folds == 3
    assert 0.5 < head.cv_accuracy <= 1 and 0 <= head.zero_shot_accuracy <= 1
    assert "3-fold CV accuracy: head" in report and f"router v{head.pk}" in report
    body = client.post(
        "/api/classify",
        json.dumps({"prompt": "How do I say 'see you soon' in Italian?"}),
        content_type="application/json",
        **auth,
    ).json()
    assert body["engine"] == f"embedding:all-MiniLM-L6-v2+router:v{head.pk}"
    assert body["top_category"] == "translation"
    assert sum(s["score"] for s in body["scores"]) == pytest.approx(1, abs=1e-5)

    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(
        "\n".join(
            json.dumps(r) for label in labels for r in [x for x in ROWS if x["label"] == label][-4:]
        )
    )
    evaluation = tmp_path / "eval.txt"
    with evaluation.open("w") as handle:
        call_command("eval_router", str(held_out), stdout=handle)
    text = evaluation.read_text()
    assert "accuracy: " in text and "expected calibration error" in text and "p50 latency" in text
    assert "truth \\ predicted" in text
    accuracy = float(text.split("accuracy: ")[1].split("%")[0])
    assert accuracy >= 75  # 12 prompts, 3 clear-cut categories


CHILD = """
import sys
import django
django.setup()
from routing.services.classification import classification_create
for line in sys.stdin:
    row = classification_create(prompt=line.strip())
    print(row.top_category, row.engine, flush=True)
"""


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    not (os.environ.get("DATABASE_URL", "").startswith("postgres") and os.environ.get("REDIS_URL")),
    reason="needs DATABASE_URL (PostgreSQL) and REDIS_URL",
)
def test_a_correction_reaches_another_process_without_a_restart(minilm, client, auth):
    CategoryRoute.objects.all().delete()
    model = mock_model()
    route("billing", model, description="invoices, payments, refunds and charges")
    route("shipping", model, description="parcels, delivery dates and tracking")
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

    def ask_child(prompt: str, engine: bool = False) -> str:
        child.stdin.write(prompt + "\n")
        child.stdin.flush()
        top, used = child.stdout.readline().split()
        return (top, used) if engine else top

    try:
        near_duplicate = "The package I paid for was charged twice and still hasn't arrived"
        assert ask_child(near_duplicate) == "billing"
        original = client.post(
            "/api/classify",
            json.dumps({"prompt": "My package I paid for was charged twice and hasn't arrived"}),
            content_type="application/json",
            **auth,
        ).json()
        assert original["top_category"] == "billing"
        response = client.post(
            f"/api/classifications/{original['id']}/feedback",
            json.dumps({"category": "shipping"}),
            content_type="application/json",
            **auth,
        )
        assert response.status_code == 200, response.content
        assert ask_child(near_duplicate) == "shipping"  # same child process, no restart
        # a fine-tuned router trained here is used there too (its layers read from the DB)
        for category, text in (
            ("billing", "Why was my card charged twice for one order?"),
            ("billing", "I need a refund for the duplicate payment"),
            ("shipping", "Where is my parcel? Tracking hasn't updated in days"),
        ):
            CategoryExample.objects.create(category=category, text=text)
        call_command(
            "train_router",
            *("--top-layers", "1", "--rounds", "1", "--cv-rounds", "1", "--folds", "2"),
            "--force",
            stdout=open(os.devnull, "w"),  # noqa: SIM115
        )
        head = RouterHead.objects.get(active=True)
        assert head.kind == RouterHead.Kind.FINETUNED
        top, engine = ask_child(near_duplicate, engine=True)
        assert engine == f"embedding:all-MiniLM-L6-v2+router:v{head.pk}"
        assert top == "shipping"
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
        assert child.returncode == 0, child.stderr.read()
