"""A deterministic compressor backend for the browser tests (no model load): keeps the
longest words, in their order, until the token budget is met."""

from compression.engines import CompressionRequest, CompressorBackend
from routing.tokens import count_tokens


class LongWordsCompressor(CompressorBackend):
    name = "long-words"

    def load(self):
        return object()

    def compress(self, request: CompressionRequest) -> str:
        words = request.text.split()
        ranked = sorted(range(len(words)), key=lambda i: (-len(words[i]), i))
        keep: set[int] = set()
        for index in ranked:
            candidate = " ".join(words[i] for i in sorted(keep | {index}))
            if count_tokens(candidate) > request.target_tokens:
                break
            keep.add(index)
        return " ".join(words[i] for i in sorted(keep))
