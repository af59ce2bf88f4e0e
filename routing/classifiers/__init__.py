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

__all__ = ["Category", "Classifier", "ClassifierResult", "get_classifier"]


def get_classifier() -> Classifier:
    """The configured backend, one instance per (backend, model) per process."""
    backend = settings.TOKENFLOW_CLASSIFIER
    model = settings.TOKENFLOW_CLASSIFIER_MODEL
    key = (backend, model)
    instance = _instances.get(key)
    if instance is None:
        with _lock:
            instance = _instances.get(key)
            if instance is None:
                instance = import_string(BACKENDS.get(backend, backend))(model=model)
                _instances[key] = instance
    return instance
