"""A deterministic compressor backend for tests: keeps the first words up to the budget
(no model load, no torch import)."""

from compression.engines import CompressionRequest, CompressorBackend
from routing.tokens import count_tokens


class TruncatingCompressor(CompressorBackend):
    name = "truncate"

    def load(self) -> str:
        return "truncate"

    def compress(self, request: CompressionRequest) -> str:
        self.ensure_loaded()
        kept: list[str] = []
        used = 0
        for word in request.text.split():
            used += count_tokens(" " + word)
            if used > request.target_tokens:
                break
            kept.append(word)
        return " ".join(kept)
