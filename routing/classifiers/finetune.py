"""The fine-tuned router: SetFit-style contrastive fine-tuning of MiniLM's top K layers.

Training (`setfit_layers`): the frozen bottom (embeddings + the first L-K transformer
layers) runs once per training text; copies of the top K layers are trained on sampled
pairs (per text and round: one of the same category, target cosine 1, and one of
another, target 0; MSE on the cosine, AdamW), as in SetFit. Only those K layers are
stored (fp16, safetensors) with the fine-tuned embeddings of the training texts.

Inference (`FinetunedHead`): the classifier runs the shared bottom once per prompt, the
base top layers for the ordinary embedding (zero-shot columns, semantic cache, ...) and
the stored top layers for the router's embedding; a category's router score is the
cosine with its prototype (normalised mean of its training embeddings) plus the cosine
with its nearest training text, turned into probabilities by a softmax whose
temperature was fitted on the cross-validation folds. `blend` keeps the zero-shot mass
of categories the router was not trained on (as LinearHead does).
"""

import copy
import random
import threading

import numpy as np

from routing.classifiers.embedding import softmax

MAX_TOKENS = 256


def split_point(model, top_layers: int) -> int:
    """Index of the first fine-tuned layer; `top_layers` 0 means all of them."""
    count = len(model.encoder.layer)
    if top_layers <= 0 or top_layers >= count:
        return 0
    return count - top_layers


def extended_mask(model, mask):
    return model.get_extended_attention_mask(mask, mask.shape)


def run_top(model, layers, hidden, mask):
    """Mean-pooled, L2-normalised output of `layers` on bottom hidden states."""
    import torch

    extended = extended_mask(model, mask)
    for layer in layers:
        out = layer(hidden, attention_mask=extended)
        hidden = out[0] if isinstance(out, tuple) else out
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def bottom_forward(model, batch, start: int):
    """Hidden states entering layer `start`: the embeddings and the layers below it only."""
    hidden = model.embeddings(
        input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids")
    )
    if start:
        extended = extended_mask(model, batch["attention_mask"])
        for layer in model.encoder.layer[:start]:
            out = layer(hidden, attention_mask=extended)
            hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def bottom_states(model, tokenizer, texts: list[str], start: int, batch_size: int = 64):
    """Per text, its hidden states entering layer `start` (unpadded, [tokens, dim])."""
    import torch

    rows = []
    with torch.inference_mode():
        for first in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[first : first + batch_size],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = model(**batch, output_hidden_states=True).hidden_states[start]
            for row, length in zip(hidden, batch["attention_mask"].sum(1).tolist(), strict=True):
                rows.append(row[:length].clone())
    return rows


def pad(rows):
    import torch

    length = max(r.shape[0] for r in rows)
    hidden = torch.zeros(len(rows), length, rows[0].shape[1])
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        hidden[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = 1
    return hidden, mask


def sample_pairs(y: list[int], rounds: int, rng: random.Random) -> list[tuple[int, int, float]]:
    pairs = []
    for _ in range(rounds):
        for i, label in enumerate(y):
            same = [j for j in range(len(y)) if y[j] == label and j != i]
            other = [j for j in range(len(y)) if y[j] != label]
            if same:
                pairs.append((i, rng.choice(same), 1.0))
            if other:
                pairs.append((i, rng.choice(other), 0.0))
    rng.shuffle(pairs)
    return pairs


def setfit_layers(
    model,
    bottoms,
    y: list[int],
    *,
    start: int,
    rounds: int,
    seed: int = 0,
    lr: float = 2e-5,
    batch_size: int = 32,
):
    """Copies of the layers from `start` on, fine-tuned on pairs of `bottoms` (see module)."""
    import torch

    torch.manual_seed(seed)
    layers = copy.deepcopy(model.encoder.layer[start:]).float().train()
    for parameter in layers.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(layers.parameters(), lr=lr)
    pairs = sample_pairs(y, rounds, random.Random(seed))
    with torch.enable_grad():
        for first in range(0, len(pairs), batch_size):
            batch = pairs[first : first + batch_size]
            unique = sorted({i for i, _, _ in batch} | {j for _, j, _ in batch})
            where = {index: n for n, index in enumerate(unique)}
            hidden, mask = pad([bottoms[i] for i in unique])
            vectors = run_top(model, layers, hidden, mask)
            a = vectors[[where[i] for i, _, _ in batch]]
            b = vectors[[where[j] for _, j, _ in batch]]
            target = torch.tensor([t for _, _, t in batch])
            loss = torch.nn.functional.mse_loss((a * b).sum(-1), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return layers.eval()


def embed_with(model, layers, bottoms) -> np.ndarray:
    import torch

    rows = []
    with torch.inference_mode():
        for first in range(0, len(bottoms), 64):
            hidden, mask = pad(bottoms[first : first + 64])
            rows.append(run_top(model, layers, hidden, mask).numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 384), dtype=np.float32)


def prototypes(vectors: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    rows = np.stack([vectors[y == c].mean(axis=0) for c in range(classes)])
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


def router_sims(
    vectors: np.ndarray, protos: np.ndarray, examples: np.ndarray, example_labels: np.ndarray
) -> np.ndarray:
    """rows x classes: prototype cosine + nearest training text's cosine."""
    near = vectors @ examples.T
    nearest = np.stack(
        [near[:, example_labels == c].max(axis=1) for c in range(protos.shape[0])], axis=1
    )
    return vectors @ protos.T + nearest


def fit_temperature(sims: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature with the lowest NLL on out-of-fold router similarities."""
    best, best_nll = 0.1, float("inf")
    for temperature in (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5):
        probs = np.stack([softmax(row, temperature) for row in sims])
        nll = float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean())
        if nll < best_nll:
            best, best_nll = temperature, nll
    return best


def layers_state(layers) -> dict:
    """fp16 tensors of the fine-tuned layers, for safetensors."""
    return {
        f"layer.{key}": value.detach().to("cpu").half().contiguous()
        for key, value in layers.state_dict().items()
    }


class FinetunedHead:
    """A RouterHead of kind "finetuned": its top layers, prototypes and training texts'
    embeddings. `layers_for(model)` builds the layer modules once (per process, per
    version) from the base model's architecture."""

    def __init__(
        self,
        labels: list[str],
        *,
        top_layers: int,
        state: dict,
        prototypes: np.ndarray,
        examples: np.ndarray,
        example_labels: np.ndarray,
        temperature: float,
        version=None,
    ):
        self.labels = list(labels)
        self.index = {label: i for i, label in enumerate(self.labels)}
        self.top_layers = top_layers
        self.state = state
        self.prototypes = np.asarray(prototypes, dtype=np.float32)
        self.examples = np.asarray(examples, dtype=np.float32)
        self.example_labels = np.asarray(example_labels, dtype=np.int64)
        self.temperature = float(temperature)
        self.version = version
        self._layers = None
        self._lock = threading.Lock()

    @classmethod
    def from_blob(cls, labels, blob: bytes, *, top_layers, prototypes, temperature, version):
        from safetensors.torch import load

        tensors = load(bytes(blob))
        state = {k[len("layer.") :]: v for k, v in tensors.items() if k.startswith("layer.")}
        return cls(
            labels,
            top_layers=top_layers,
            state=state,
            prototypes=prototypes,
            examples=tensors["examples"].float().numpy(),
            example_labels=tensors["example_labels"].numpy(),
            temperature=temperature,
            version=version,
        )

    def to_blob(self) -> bytes:
        import torch
        from safetensors.torch import save

        tensors = {f"layer.{k}": v.half().contiguous() for k, v in self.state.items()}
        tensors["examples"] = torch.from_numpy(self.examples).half().contiguous()
        tensors["example_labels"] = torch.from_numpy(self.example_labels).contiguous()
        return save(tensors)

    def layers_for(self, model):
        if self._layers is None:
            with self._lock:
                if self._layers is None:
                    start = split_point(model, self.top_layers)
                    layers = copy.deepcopy(model.encoder.layer[start:]).float().eval()
                    layers.load_state_dict({k: v.float() for k, v in self.state.items()})
                    self._layers = (start, layers)
        return self._layers

    def covers(self, labels: list[str]) -> bool:
        """True if it was trained on every one of `labels` (then zero-shot is not needed)."""
        return len(labels) >= 2 and all(label in self.index for label in labels)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        sims = router_sims(vectors, self.prototypes, self.examples, self.example_labels)
        return np.stack([softmax(row, self.temperature) for row in sims])

    def probabilities_for(self, vectors: np.ndarray, labels: list[str]) -> np.ndarray:
        """rows x `labels` (all of them the router's), in `labels` order, summing to 1."""
        sims = router_sims(vectors, self.prototypes, self.examples, self.example_labels)
        columns = sims[:, [self.index[label] for label in labels]]
        return np.stack([softmax(row, self.temperature) for row in columns])

    def blend(self, vector: np.ndarray, labels: list[str], zero_shot: np.ndarray) -> np.ndarray:
        """`vector` is the prompt's router embedding (this head's layers)."""
        known = [i for i, label in enumerate(labels) if label in self.index]
        if len(known) < 2:
            return zero_shot
        rows = [self.index[labels[i]] for i in known]
        sims = router_sims(vector[None, :], self.prototypes, self.examples, self.example_labels)
        head = softmax(sims[0, rows], self.temperature)
        scores = np.array(zero_shot, dtype=np.float64)
        scores[known] = scores[known].sum() * head
        return scores
