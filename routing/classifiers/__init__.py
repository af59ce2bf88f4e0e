"""Zero-shot classifiers behind one interface, chosen by settings.TOKENFLOW_CLASSIFIER."""

import threading

from django.conf import settings
from django.utils.module_loading import import_string

from routing.classifiers.base import Category, Classifier, ClassifierResult

BACKENDS = {
    "embedding": "routing.classifiers.embedding.EmbeddingClassifier",
    "nli": "routing.classifiers.nli.NLIClassifier",
}

_lock = threading.Lock()
_instances: dict[tuple[str, str], Classifier] = {}

__all__ = ["Category", "Classifier", "ClassifierResult", "classifier_with_head", "get_classifier"]


def _instance(backend: str, model: str) -> Classifier:
    """One instance per (backend, model) per process (the model loads once, lazily)."""
    key = (BACKENDS.get(backend, backend), model)
    instance = _instances.get(key)
    if instance is None:
        with _lock:
            instance = _instances.get(key)
            if instance is None:
                instance = import_string(key[0])(model=model)
                _instances[key] = instance
    return instance


def get_classifier() -> Classifier:
    """The configured backend, one instance per (backend, model) per process."""
    return _instance(settings.TOKENFLOW_CLASSIFIER, settings.TOKENFLOW_CLASSIFIER_MODEL)


def classifier_with_head(purpose: str) -> Classifier:
    """The configured classifier when it supports trained heads and adaptations, else 400
    `unsupported_classifier` ("cannot {purpose}")."""
    from tokenflow_site.errors import ApiError

    classifier = get_classifier()
    if not getattr(classifier, "supports_head", False):
        raise ApiError(
            f"The classifier {classifier.engine_name!r} cannot {purpose}.",
            code="unsupported_classifier",
            status=400,
        )
    return classifier


def minilm():
    """The process's all-MiniLM-L6-v2 (an EmbeddingClassifier): the very instance the
    default classifier uses, so /v1/embeddings and classification share one loaded copy."""
    return _instance("embedding", "")
