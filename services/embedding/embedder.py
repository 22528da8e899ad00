"""The embedding domain: request validation and micro-batched encoding off the event loop.

A request's texts are tokenised on a small thread pool (the Rust tokenizer releases the GIL, so this runs beside
the forward pass of the batch before), then join the micro-batcher, whose batches close by a count and by a
token budget; the encoder's own thread sorts each batch by length and runs it in padded-token-bounded
sub-batches.

During a rollout it holds two encoders (the current one and a version asked for by name, loaded once, on a thread
of its own, on first use); both feed the one model thread, so they never compete for the cores.

Each encoder has two lanes to that thread. Requests of a few texts (queries) join the interactive lane, whose
batches run whole; larger ones (ingestion, a reindex) join the bulk lane, whose batches run a few texts at a time,
so a query waits for at most that much bulk work, not for a whole bulk batch."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from services.common.batching import BatchStats, MicroBatcher
from services.common.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from services.embedding.encoder import EncodedText, TokenizedText
from services.embedding.versions import BASE_VERSION

# The name that asks for the base model whatever the current encoder is ("" asks for the current one).
BASE_NAME = "base"
# Requests of at most this many texts take the interactive lane (a query is one text; the gateway's item batches
# are far larger).
INTERACTIVE_TEXTS = 8
# A bulk batch runs on the model thread this many texts at a time: what a query may wait behind (bench/reindex.py:
# 32 texts, one CPU forward pass, left queries waiting ~150-350 ms on two cores while a reindex ran).
BULK_CHUNK_TEXTS = 8


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


class EncoderVersions(Protocol):
    """Named encoder versions the service can load besides its current one (the composition root's loader)."""

    def available(self) -> list[str]: ...

    def load(self, version: str) -> Encoder: ...


Prepared = TokenizedText | str


@dataclass(frozen=True)
class Limits:
    max_texts_per_request: int
    max_text_chars: int


def _cost(item: Prepared) -> int:
    # An encoder that does not tokenise apart (a test fake) gets a rough estimate: ~4 characters a token.
    return item.token_count if isinstance(item, TokenizedText) else 2 + len(item) // 4


@dataclass(frozen=True)
class Embedded:
    """One request's vectors and the encoder version ("" the base model) and model that made them."""

    version: str
    model_id: str
    items: list[EncodedText]


@dataclass(frozen=True)
class _Loaded:
    encoder: Encoder
    interactive: MicroBatcher[Prepared, EncodedText]
    bulk: MicroBatcher[Prepared, EncodedText]

    def lane(self, texts: int) -> MicroBatcher[Prepared, EncodedText]:
        return self.interactive if texts <= INTERACTIVE_TEXTS else self.bulk


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
        version: str = BASE_VERSION,
        versions: EncoderVersions | None = None,
        max_encoders: int = 2,
    ) -> None:
        self.limits = limits
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens or 0
        self.version = version  # the current encoder's version; "" the base model
        self._versions = versions
        self._max_encoders = max_encoders
        self._max_batch_wait_s = max_batch_wait_s
        self._max_queued_texts = max_queued_texts  # per encoder
        self._on_batch = on_batch
        # One thread owns the models: torch parallelises inside the forward pass.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._tokenizer_pool = (
            ThreadPoolExecutor(
                max_workers=tokenizer_threads or min(4, os.cpu_count() or 1), thread_name_prefix="tokenizer"
            )
            if isinstance(encoder, TokenizingEncoder)
            else None
        )
        self._loaded: dict[str, _Loaded] = {version: self._hold(encoder)}
        self._loading = asyncio.Lock()

    def _hold(self, encoder: Encoder) -> _Loaded:
        def run(items: list[Prepared]) -> list[EncodedText]:
            if isinstance(encoder, TokenizingEncoder):
                return encoder.encode_tokens([i for i in items if isinstance(i, TokenizedText)])
            return encoder.encode([i for i in items if isinstance(i, str)])

        def lane(chunk_items: int | None) -> MicroBatcher[Prepared, EncodedText]:
            return MicroBatcher(
                run,
                self._executor,
                self.max_batch_size,
                self._max_batch_wait_s,
                self._max_queued_texts,
                self._on_batch,
                cost=_cost,
                max_batch_cost=self.max_batch_tokens or None,
                chunk_items=chunk_items,
            )

        return _Loaded(encoder, interactive=lane(None), bulk=lane(BULK_CHUNK_TEXTS))

    @property
    def encoder(self) -> Encoder:
        """The current encoder."""
        return self._loaded[self.version].encoder

    @property
    def loaded_versions(self) -> list[str]:
        return list(self._loaded)

    async def available_versions(self) -> list[str]:
        """The versions that can be named besides the base model, newest first (read from disk, off the loop)."""
        if self._versions is None:
            return [v for v in self._loaded if v != BASE_VERSION]
        return await asyncio.to_thread(self._versions.available)

    @property
    def backend(self) -> str:
        return str(getattr(self.encoder, "backend", "custom"))

    @property
    def forward_batch_size(self) -> int:
        return int(getattr(self.encoder, "batch_size", self.max_batch_size))

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

    async def _prepare(self, encoder: Encoder, texts: Sequence[str]) -> list[Prepared]:
        if self._tokenizer_pool is None or not isinstance(encoder, TokenizingEncoder):
            return list(texts)
        tokenized = await asyncio.get_running_loop().run_in_executor(
            self._tokenizer_pool, encoder.tokenize, list(texts)
        )
        return list(tokenized)

    async def _resolve(self, name: str) -> tuple[str, _Loaded]:
        """The version ``name`` asks for and its encoder, loaded on first use (once, on a thread of its own)."""
        version = BASE_VERSION if name == BASE_NAME else name or self.version
        if version in self._loaded:
            return version, self._loaded[version]
        async with self._loading:
            if version in self._loaded:  # loaded while this request waited for the lock
                return version, self._loaded[version]
            available = await self.available_versions()
            if self._versions is None or (version != BASE_VERSION and version not in available):
                names = [BASE_NAME, *available] if self._versions is not None else [self.version or BASE_NAME]
                raise NotFoundError(f"encoder version {name!r} is not available; available: {', '.join(names)}")
            if len(self._loaded) >= self._max_encoders:
                held = ", ".join(repr(v) for v in self._loaded)
                raise FailedPreconditionError(
                    f"already holding {len(self._loaded)} encoders ({held}), the most EMBEDDING_MAX_ENCODERS allows: "
                    "restart the service with EMBEDDING_ENCODER_VERSION set to the one to serve"
                )
            loaded = self._hold(await asyncio.to_thread(self._versions.load, version))
            self._loaded[version] = loaded
            return version, loaded

    async def embed(self, texts: Sequence[str], version: str = "") -> Embedded:
        """Vectors of ``texts`` from encoder ``version``: "" the current one, "base" the base model, else a named
        version (NotFoundError when there is none by that name)."""
        self.validate(texts)
        name, loaded = await self._resolve(version)
        lane = loaded.lane(len(texts))
        lane.admit(len(texts))  # refuse overload before spending the tokenisation
        items = await lane.submit(await self._prepare(loaded.encoder, texts))
        return Embedded(name, loaded.encoder.model_id, items)

    async def warm_up(self) -> None:
        await self.embed(["warm-up text for the encoder"])

    async def close(self) -> None:
        for loaded in self._loaded.values():
            await loaded.interactive.close()
            await loaded.bulk.close()
        self._executor.shutdown(wait=True)
        if self._tokenizer_pool is not None:
            self._tokenizer_pool.shutdown(wait=True)
