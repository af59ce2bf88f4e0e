"""Anything shaped like a secret is masked before it is stored or logged."""

import pytest

from tokenflow_site.redact import MASK, redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Incorrect API key provided: sk-proj-********abcd.", "sk-proj-********abcd"),
        ("Incorrect API key provided: sk-abcdefghijklmnop", "sk-abcdefghijklmnop"),
        ("groq said gsk_0123456789abcdef is invalid", "gsk_0123456789abcdef"),
        ("Authorization: Bearer tf_abcdefghijklmno", "tf_abcdefghijklmno"),
        ("postgres://app:hunter22@db:5432/x unreachable", "hunter22"),
        ('{"api_key": "abcd1234efgh"}', "abcd1234efgh"),
        ("?token=zzzz9999yyyy&x=1", "zzzz9999yyyy"),
    ],
)
def test_secret_shapes_are_masked(text, secret):
    masked = redact(text)
    assert secret not in masked and MASK in masked


def test_values_of_secret_environment_variables_are_masked(monkeypatch):
    monkeypatch.setenv("ACME_API_KEY", "plain-looking-value-42")
    assert redact("upstream echoed plain-looking-value-42 back") == f"upstream echoed {MASK} back"


def test_ordinary_text_is_left_alone():
    text = "The upstream provider timed out after 60 s; tokens: 12, secret sauce recipe."
    assert redact(text) == text
