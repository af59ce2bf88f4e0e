"""The classifier contract: score a prompt against (label, description) categories."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    """A label, the text the classifier compares the prompt with (may be empty), and
    example utterances of the category (may be none)."""

    label: str
    description: str = ""
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassifierResult:
    """Scores in category order. Single-label scores sum to 1; multi-label ones are
    independent probabilities in [0, 1]."""

    scores: list[tuple[str, float]]

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.scores, key=lambda item: item[1], reverse=True)


class Classifier:
    """Backends implement `classify`; `engine` names the backend and its model."""

    engine: str = "base"

    def __init__(self, *, model: str = "") -> None:
        self.model = model

    @property
    def engine_name(self) -> str:
        """Stored on each Classification row, e.g. "embedding:all-MiniLM-L6-v2"."""
        return self.engine

    def load(self) -> None:
        """Load weights now (otherwise the first `classify` does); idempotent, thread-safe."""

    #: Backends that can apply a trained RouterHead (see routing.services.training).
    supports_head: bool = False

    def classify(
        self, prompt: str, categories: list[Category], *, multi_label: bool = False
    ) -> ClassifierResult:
        raise NotImplementedError
