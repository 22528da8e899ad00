"""gRPC transport of the preprocessor service: converts types, nothing else."""

from __future__ import annotations

import grpc

from recsys.preprocessor.v1 import preprocessor_pb2, preprocessor_pb2_grpc
from services.preprocessor.cleaning import ChangeKind, CleanedText, ItemFields
from services.preprocessor.service import Preprocessing

_CHANGE_KINDS = {kind: f"CHANGE_KIND_{kind.name}" for kind in ChangeKind}


def _cleaned(result: CleanedText) -> preprocessor_pb2.CleanedText:
    return preprocessor_pb2.CleanedText(
        text=result.text,
        changes=[_CHANGE_KINDS[c] for c in result.changes],
        token_count=result.token_count,
        truncated=result.truncated,
    )


class PreprocessorServicer(preprocessor_pb2_grpc.PreprocessorServiceServicer):
    def __init__(self, preprocessing: Preprocessing) -> None:
        self._preprocessing = preprocessing

    async def CleanTexts(
        self, request: preprocessor_pb2.CleanTextsRequest, context: grpc.aio.ServicerContext
    ) -> preprocessor_pb2.CleanTextsResponse:
        results = await self._preprocessing.clean(list(request.texts))
        return preprocessor_pb2.CleanTextsResponse(
            results=[_cleaned(r) for r in results], max_tokens=self._preprocessing.preprocessor.max_tokens
        )

    async def BuildItemTexts(
        self, request: preprocessor_pb2.BuildItemTextsRequest, context: grpc.aio.ServicerContext
    ) -> preprocessor_pb2.BuildItemTextsResponse:
        items = [
            ItemFields(
                item_id=item.item_id,
                title=item.title,
                description=item.description,
                categories=tuple(item.categories),
                brand=item.brand,
                attributes=dict(item.attributes),
            )
            for item in request.items
        ]
        results = await self._preprocessing.build_item_texts(items)
        return preprocessor_pb2.BuildItemTextsResponse(
            items=[
                preprocessor_pb2.ItemText(item_id=item.item_id, text=_cleaned(result))
                for item, result in zip(items, results, strict=True)
            ],
            max_tokens=self._preprocessing.preprocessor.max_tokens,
        )
