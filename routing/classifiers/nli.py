"""NLI zero-shot classifier: the transformers zero-shot-classification pipeline.

For users who have an NLI model (TOKENFLOW_CLASSIFIER=nli,
TOKENFLOW_CLASSIFIER_MODEL=facebook/bart-large-mnli or a local directory). Each
category becomes the hypothesis "This example is {label: description}."; the pipeline
already returns single-label scores that sum to 1 and independent multi-label ones.
"""

import threading

from routing.classifiers.base import Category, Classifier, ClassifierResult
from routing.classifiers.embedding import category_text

DEFAULT_MODEL = "facebook/bart-large-mnli"
HYPOTHESIS_TEMPLATE = "This example is {}."


class NLIClassifier(Classifier):
    engine = "nli"

    def __init__(self, *, model: str = "") -> None:
        super().__init__(model=model or DEFAULT_MODEL)
        self._lock = threading.Lock()
        self._pipeline = None

    @property
    def engine_name(self) -> str:
        return f"nli:{self.model.rstrip('/').rsplit('/', 1)[-1]}"

    def load(self) -> None:
        if self._pipeline is not None:
            return
        with self._lock:
            if self._pipeline is None:
                # transformers is heavy: imported on first use, not at Django start-up.
                from transformers import pipeline

                self._pipeline = pipeline(
                    "zero-shot-classification", model=self.model, tokenizer=self.model, device=-1
                )

    def classify(
        self, prompt: str, categories: list[Category], *, multi_label: bool = False
    ) -> ClassifierResult:
        self.load()
        texts = [category_text(c) for c in categories]
        if len(set(texts)) != len(texts):
            texts = [c.label for c in categories]
        label_of = dict(zip(texts, (c.label for c in categories), strict=True))
        with self._lock:
            output = self._pipeline(
                prompt,
                candidate_labels=texts,
                multi_label=multi_label,
                hypothesis_template=HYPOTHESIS_TEMPLATE,
            )
        by_label = {
            label_of[text]: float(score)
            for text, score in zip(output["labels"], output["scores"], strict=True)
        }
        return ClassifierResult([(c.label, by_label[c.label]) for c in categories])
