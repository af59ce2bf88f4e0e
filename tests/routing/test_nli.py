"""The NLI backend with a tiny random NLI-shaped BERT built here (no hub download)."""

import json

import pytest

from routing.classifiers import get_classifier
from routing.classifiers.base import Category
from routing.classifiers.nli import NLIClassifier

WORDS = [
    "this",
    "example",
    "is",
    "a",
    "about",
    "code",
    "math",
    "poems",
    "write",
    "function",
    "sum",
    "numbers",
    "story",
    ":",
    ".",
]


@pytest.fixture(scope="module")
def tiny_nli(tmp_path_factory) -> str:
    """A 1-layer BertForSequenceClassification with entailment/neutral/contradiction labels."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-nli")
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(path)
    labels = {0: "contradiction", 1: "neutral", 2: "entailment"}
    config = BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    return str(path)


CATEGORIES = [Category("code", "write a function"), Category("math"), Category("poems")]


def test_single_label_scores_sum_to_one_in_category_order(tiny_nli):
    classifier = NLIClassifier(model=tiny_nli)
    result = classifier.classify("write a function to sum numbers", CATEGORIES)
    assert [label for label, _ in result.scores] == ["code", "math", "poems"]
    assert sum(s for _, s in result.scores) == pytest.approx(1, abs=1e-5)
    assert classifier.engine_name == f"nli:{tiny_nli.rsplit('/', 1)[-1]}"


def test_multi_label_scores_are_independent(tiny_nli):
    classifier = NLIClassifier(model=tiny_nli)
    prompt = "write a story about numbers"
    multi = dict(classifier.classify(prompt, CATEGORIES, multi_label=True).scores)
    more = [*CATEGORIES, Category("story")]
    multi_more = dict(classifier.classify(prompt, more, multi_label=True).scores)
    single = dict(classifier.classify(prompt, CATEGORIES).scores)
    single_more = dict(classifier.classify(prompt, more).scores)
    for label, score in multi.items():
        assert multi_more[label] == pytest.approx(score, abs=1e-5)
        assert 0 <= score <= 1
    assert single_more["code"] < single["code"]


@pytest.mark.django_db
def test_api_uses_the_nli_backend_when_configured(client, auth, settings, tiny_nli):
    settings.TOKENFLOW_CLASSIFIER = "nli"
    settings.TOKENFLOW_CLASSIFIER_MODEL = tiny_nli
    assert isinstance(get_classifier(), NLIClassifier)
    body = {"prompt": "sum numbers", "possible_categories": ["code", "math"], "multi_label": True}
    response = client.post(
        "/api/classify", json.dumps(body), content_type="application/json", **auth
    )
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["engine"].startswith("nli:") and data["multi_label"]
    assert {s["category"] for s in data["scores"]} == {"code", "math"}
