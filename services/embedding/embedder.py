"""The embedding domain: request validation and micro-batched encoding off the event loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from services.common.batching import BatchStats, MicroBatcher
from services.common.errors import InvalidArgumentError
from services.embedding.encoder import EncodedText


class Encoder(Protocol):
    model_id: str
    dimension: int
    max_tokens: int
    device: str
    dtype: str

    def encode(self, texts: Sequence[str]) -> list[EncodedText]: ...


@dataclass(frozen=True)
class Limits:
    max_texts_per_request: int
    max_text_chars: int


class Embedder:
    def __init__(
        self,
        encoder: Encoder,
        limits: Limits,
        max_batch_size: int,
        max_batch_wait_s: float,
        max_queued_texts: int,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.encoder = encoder
        self.limits = limits
        self.max_batch_size = max_batch_size
        # One thread owns the model: torch parallelises inside the forward pass.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._batcher: MicroBatcher[str, EncodedText] = MicroBatcher(
            encoder.encode, self._executor, max_batch_size, max_batch_wait_s, max_queued_texts, on_batch
        )

    def validate(self, texts: Sequence[str]) -> None:
        if not texts:
            raise InvalidArgumentError("texts is empty: send at least one text")
        if len(texts) > self.limits.max_texts_per_request:
            raise InvalidArgumentError(
                f"{len(texts)} texts in one request; the limit is {self.limits.max_texts_per_request}: split the batch"
            )
        for index, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgumentError(f"texts[{index}] is empty or blank: send text to embed")
            if len(text) > self.limits.max_text_chars:
                raise InvalidArgumentError(
                    f"texts[{index}] has {len(text)} characters; the limit is {self.limits.max_text_chars} "
                    f"(the model reads only the first {self.encoder.max_tokens} tokens): shorten it, "
                    "for example with the preprocessor's CleanTexts"
                )

    async def embed(self, texts: Sequence[str]) -> list[EncodedText]:
        self.validate(texts)
        return await self._batcher.submit(texts)

    async def warm_up(self) -> None:
        await self._batcher.submit(["warm-up text for the encoder"])

    async def close(self) -> None:
        await self._batcher.close()
        self._executor.shutdown(wait=True)
