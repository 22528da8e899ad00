"""The preprocessor's domain entry: validation and cleaning off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from services.common.errors import InvalidArgumentError
from services.preprocessor.cleaning import CleanedText, ItemFields, TextPreprocessor


class Preprocessing:
    def __init__(self, preprocessor: TextPreprocessor, max_texts_per_request: int, workers: int) -> None:
        self.preprocessor = preprocessor
        self.max_texts_per_request = max_texts_per_request
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clean")

    def _check_count(self, count: int, what: str) -> None:
        if count == 0:
            raise InvalidArgumentError(f"{what} is empty: send at least one")
        if count > self.max_texts_per_request:
            raise InvalidArgumentError(
                f"{count} {what} in one call; the limit is {self.max_texts_per_request}: split the batch"
            )

    async def clean(self, texts: Sequence[str]) -> list[CleanedText]:
        self._check_count(len(texts), "texts")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.preprocessor.clean_many, texts)

    async def build_item_texts(self, items: Sequence[ItemFields]) -> list[CleanedText]:
        self._check_count(len(items), "items")
        for index, item in enumerate(items):
            if not item.title.strip():
                raise InvalidArgumentError(f"items[{index}] ({item.item_id or 'no id'}) has no title")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.preprocessor.build_many, items)

    async def warm_up(self) -> None:
        # Compiles the patterns and loads the tokenizer's caches before the first real call.
        await self.clean(["<p>Warm-up text, mail a@b.example or call +1 415 555 0100.</p>"])

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
