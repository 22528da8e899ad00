"""The preprocessor's domain entry: validation and cleaning off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from services.common.errors import InvalidArgumentError
from services.preprocessor.cleaning import CleanedText, ItemFields, TextPreprocessor


class Preprocessing:
    def __init__(
        self,
        preprocessor: TextPreprocessor,
        max_texts_per_request: int,
        workers: int,
        *,
        max_text_chars: int = 100_000,
        max_fields_per_item: int = 512,
        max_request_chars: int = 4_000_000,
    ) -> None:
        self.max_request_chars = max_request_chars
        self.preprocessor = preprocessor
        self.max_texts_per_request = max_texts_per_request
        self.max_text_chars = max_text_chars
        self.max_fields_per_item = max_fields_per_item
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clean")

    def _check_count(self, count: int, what: str) -> None:
        if count == 0:
            raise InvalidArgumentError(f"{what} is empty: send at least one")
        if count > self.max_texts_per_request:
            raise InvalidArgumentError(
                f"{count} {what} in one call; the limit is {self.max_texts_per_request}: split the batch"
            )

    def _check_length(self, text: str, what: str) -> None:
        # Cleaning costs time in proportion to the text; the model reads only ~1,000 characters anyway.
        if len(text) > self.max_text_chars:
            raise InvalidArgumentError(
                f"{what} has {len(text)} characters; the limit is {self.max_text_chars}: shorten it"
            )

    def _check_total(self, total: int) -> None:
        # One call must not hold the cleaning threads for seconds: a 16 MB call took 24 s under fuzzing.
        if total > self.max_request_chars:
            raise InvalidArgumentError(
                f"the call holds {total} characters; the limit is {self.max_request_chars}: split the batch"
            )

    async def clean(self, texts: Sequence[str]) -> list[CleanedText]:
        self._check_count(len(texts), "texts")
        for index, text in enumerate(texts):
            self._check_length(text, f"texts[{index}]")
        self._check_total(sum(len(t) for t in texts))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.preprocessor.clean_many, texts)

    async def build_item_texts(self, items: Sequence[ItemFields]) -> list[CleanedText]:
        self._check_count(len(items), "items")
        total = 0
        for index, item in enumerate(items):
            if not item.title.strip():
                raise InvalidArgumentError(f"items[{index}] has no title")
            fields = len(item.categories) + len(item.attributes)
            if fields > self.max_fields_per_item:
                raise InvalidArgumentError(
                    f"items[{index}] has {fields} categories and attributes; the limit is {self.max_fields_per_item}"
                )
            texts = [item.title, item.description, item.brand, *item.categories]
            texts += [f"{k}{v}" for k, v in item.attributes.items()]
            for text in texts:
                self._check_length(text, f"a field of items[{index}]")
            total += sum(len(t) for t in texts)
        self._check_total(total)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.preprocessor.build_many, items)

    async def warm_up(self) -> None:
        # Compiles the patterns and loads the tokenizer's caches before the first real call.
        await self.clean(["<p>Warm-up text, mail a@b.example or call +1 415 555 0100.</p>"])

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
