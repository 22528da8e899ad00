"""The embedding domain: request validation and micro-batched encoding off the event loop.

A request's texts are tokenised on a small thread pool (the Rust tokenizer releases the GIL, so this runs beside
the forward pass of the batch before), then join the micro-batcher, whose batches close by a count and by a
token budget; the encoder's own thread sorts each batch by length and runs it in padded-token-bounded
sub-batches."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from services.common.batching import BatchStats, MicroBatcher
from services.common.errors import InvalidArgumentError
from services.embedding.encoder import EncodedText, TokenizedText


class Encoder(Protocol):
    model_id: str
    dimension: int
    max_tokens: int
    device: str
    dtype: str

    def encode(self, texts: Sequence[str]) -> list[EncodedText]: ...


@runtime_checkable
class TokenizingEncoder(Protocol):
    """An encoder whose tokenisation can run apart from its forward pass (TextEncoder)."""

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]: ...

    def encode_tokens(self, items: Sequence[TokenizedText]) -> list[EncodedText]: ...


Prepared = TokenizedText | str


@dataclass(frozen=True)
class Limits:
    max_texts_per_request: int
    max_text_chars: int


def _cost(item: Prepared) -> int:
    # An encoder that does not tokenise apart (a test fake) gets a rough estimate: ~4 characters a token.
    return item.token_count if isinstance(item, TokenizedText) else 2 + len(item) // 4


class Embedder:
    def __init__(
        self,
        encoder: Encoder,
        limits: Limits,
        max_batch_size: int,
        max_batch_wait_s: float,
        max_queued_texts: int,
        on_batch: Callable[[BatchStats], None] | None = None,
        max_batch_tokens: int | None = None,
        tokenizer_threads: int = 0,
    ) -> None:
        self.encoder = encoder
        self.limits = limits
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens or 0
        # One thread owns the model: torch parallelises inside the forward pass.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._tokenizing = isinstance(encoder, TokenizingEncoder)
        self._tokenizer_pool = (
            ThreadPoolExecutor(
                max_workers=tokenizer_threads or min(4, os.cpu_count() or 1), thread_name_prefix="tokenizer"
            )
            if self._tokenizing
            else None
        )
        self._batcher: MicroBatcher[Prepared, EncodedText] = MicroBatcher(
            self._run,
            self._executor,
            max_batch_size,
            max_batch_wait_s,
            max_queued_texts,
            on_batch,
            cost=_cost,
            max_batch_cost=max_batch_tokens,
        )

    @property
    def backend(self) -> str:
        return str(getattr(self.encoder, "backend", "custom"))

    @property
    def forward_batch_size(self) -> int:
        return int(getattr(self.encoder, "batch_size", self.max_batch_size))

    def _run(self, items: list[Prepared]) -> list[EncodedText]:
        if isinstance(self.encoder, TokenizingEncoder):
            return self.encoder.encode_tokens([i for i in items if isinstance(i, TokenizedText)])
        return self.encoder.encode([i for i in items if isinstance(i, str)])

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

    async def _prepare(self, texts: Sequence[str]) -> list[Prepared]:
        if self._tokenizer_pool is None or not isinstance(self.encoder, TokenizingEncoder):
            return list(texts)
        tokenized = await asyncio.get_running_loop().run_in_executor(
            self._tokenizer_pool, self.encoder.tokenize, list(texts)
        )
        return list(tokenized)

    async def embed(self, texts: Sequence[str]) -> list[EncodedText]:
        self.validate(texts)
        self._batcher.admit(len(texts))  # refuse overload before spending the tokenisation
        return await self._batcher.submit(await self._prepare(texts))

    async def warm_up(self) -> None:
        await self._batcher.submit(await self._prepare(["warm-up text for the encoder"]))

    async def close(self) -> None:
        await self._batcher.close()
        self._executor.shutdown(wait=True)
        if self._tokenizer_pool is not None:
            self._tokenizer_pool.shutdown(wait=True)
