"""A deterministic classifier backend for tests: a category wins when its label is in the prompt."""

from routing.classifiers.base import Category, Classifier, ClassifierResult


class KeywordClassifier(Classifier):
    engine = "keyword"

    def classify(
        self, prompt: str, categories: list[Category], *, multi_label: bool = False
    ) -> ClassifierResult:
        hits = [c.label.lower() in prompt.lower() for c in categories]
        if multi_label:
            scores = [0.9 if hit else 0.1 for hit in hits]
        else:
            weights = [9.0 if hit else 1.0 for hit in hits]
            scores = [w / sum(weights) for w in weights]
        return ClassifierResult([(c.label, s) for c, s in zip(categories, scores, strict=True)])
