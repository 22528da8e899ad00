"""gRPC adapters from the gateway's ports to the four backend services. Every call carries a deadline
derived from the caller's remaining time; a backend's failure surfaces as a domain error."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import struct_pb2

from recsys.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from recsys.preprocessor.v1 import preprocessor_pb2, preprocessor_pb2_grpc
from recsys.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.common.attributes import format_attribute_value
from services.common.clients import call_timeout, request_metadata
from services.common.encoders import SERVING_ENCODER_KEY, encoder_from_token, encoder_token
from services.common.structs import dict_to_struct, struct_to_dict
from services.gateway.model import (
    SERVING_ENCODER,
    BackendUnavailableError,
    Candidates,
    CatalogRecord,
    EncoderChangedError,
    HistoryEvent,
    Impression,
    ItemFilter,
    ItemText,
    NewItem,
    Profile,
    Ranking,
    StoredItem,
)

Response = TypeVar("Response")

# Calls with a fallback (query cleaning and embedding, ranking) take at most this share of the caller's
# remaining time, so the fallback still has time to answer.
OPTIONAL_SHARE = 0.5
# An idempotent write's first try takes at most this share of the time left, so a retry still fits in it.
FIRST_TRY_SHARE = 0.5


async def _call(
    name: str, call: Callable[..., Awaitable[Response]], request: Any, timeout_s: float, share: float = 1.0
) -> Response:
    try:
        return await call(request, timeout=call_timeout(timeout_s, share), metadata=request_metadata())
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise BackendUnavailableError(
                name, f"the {name} service did not answer ({error.code().name}); retry"
            ) from error
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
            serving = dict(error.trailing_metadata() or ()).get(SERVING_ENCODER_KEY)
            if serving is not None:
                raise EncoderChangedError(encoder_from_token(str(serving))) from error
        raise


Stamped = TypeVar("Stamped")


def _stamped(request: Stamped) -> Stamped:
    """``request`` (one that carries or asks for vectors) with its encoder_version set to the serving encoder of
    the request under way; unset (unchecked) outside a tracked request."""
    serving = SERVING_ENCODER.get()
    if serving is not None:
        request.encoder_version = serving  # type: ignore[attr-defined]
    return request


def _embedding_version() -> str:
    """EmbedTexts' encoder_version: the serving encoder ("base" for the base model), else the service's own."""
    serving = SERVING_ENCODER.get()
    return "" if serving is None else encoder_token(serving)


def _vector(values: Sequence[float]) -> np.ndarray | None:
    return np.asarray(values, dtype=np.float32) if len(values) else None


def _payload(struct: struct_pb2.Struct) -> dict[str, Any]:
    return struct_to_dict(struct)


def _retriever_filter(item_filter: ItemFilter) -> retriever_pb2.Filter:
    return retriever_pb2.Filter(
        categories_any=list(item_filter.categories_any),
        keywords=[retriever_pb2.KeywordCondition(field=f, any_of=list(v)) for f, v in item_filter.keywords.items()],
        ranges=[retriever_pb2.RangeCondition(field=f, gte=lo, lte=hi) for f, (lo, hi) in item_filter.ranges.items()],
        flags=[retriever_pb2.FlagCondition(field=f, value=v) for f, v in item_filter.flags.items()],
    )


def _stored(item: retriever_pb2.ScoredItem | retriever_pb2.Item, score: float = 0.0) -> StoredItem:
    return StoredItem(item.item_id, score, _payload(item.payload), _vector(item.vector))


class JsonPayload(Mapping[str, Any]):
    """A payload kept as the retriever's JSON and decoded on first read: most of a Recommend's ~200 candidates
    are scored and never shown, and decoding them all was a quarter of the gateway's own work per call."""

    __slots__ = ("_decoded", "_raw")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._decoded: dict[str, Any] | None = None

    def _data(self) -> dict[str, Any]:
        if self._decoded is None:
            self._decoded = json.loads(self._raw) if self._raw else {}
        return self._decoded

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())


def _found(item: retriever_pb2.ScoredItem, score: float | None = None) -> StoredItem:
    """A search result, asked for packed (`payload_json`, `vector_f32`): cheaper to read than Struct and
    repeated float for the ~200 candidates of a Recommend."""
    vector = np.frombuffer(item.vector_f32, dtype="<f4") if item.vector_f32 else None
    return StoredItem(item.item_id, item.score if score is None else score, JsonPayload(item.payload_json), vector)


class PreprocessorClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_s: float, query_timeout_s: float) -> None:
        self._stub = preprocessor_pb2_grpc.PreprocessorServiceStub(channel)
        self._timeout_s = timeout_s
        self._query_timeout_s = query_timeout_s

    async def clean_query(self, text: str) -> str:
        request = preprocessor_pb2.CleanTextsRequest(texts=[text])
        response = await _call("preprocessor", self._stub.CleanTexts, request, self._query_timeout_s, OPTIONAL_SHARE)
        return str(response.results[0].text)

    async def build_item_texts(self, records: Sequence[CatalogRecord]) -> list[ItemText]:
        request = preprocessor_pb2.BuildItemTextsRequest(
            items=[
                preprocessor_pb2.ItemFields(
                    item_id=r.item_id,
                    title=r.title,
                    description=r.description,
                    categories=list(r.categories),
                    brand=str(r.attributes.get("brand", "")),
                    attributes={k: format_attribute_value(v) for k, v in r.attributes.items() if k != "brand"},
                )
                for r in records
            ]
        )
        response = await _call("preprocessor", self._stub.BuildItemTexts, request, self._timeout_s)
        return [ItemText(i.text.text, i.text.truncated) for i in response.items]


class EmbeddingClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_s: float, query_timeout_s: float) -> None:
        self._stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        self._timeout_s = timeout_s
        self._query_timeout_s = query_timeout_s

    async def embed_query(self, text: str) -> np.ndarray:
        request = embedding_pb2.EmbedTextsRequest(texts=[text], packed=True, encoder_version=_embedding_version())
        response = await _call("embedding", self._stub.EmbedTexts, request, self._query_timeout_s, OPTIONAL_SHARE)
        vector: np.ndarray = embedding_matrix(response)[0]
        return vector

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        request = embedding_pb2.EmbedTextsRequest(texts=list(texts), packed=True, encoder_version=_embedding_version())
        response = await _call("embedding", self._stub.EmbedTexts, request, self._timeout_s)
        return embedding_matrix(response)


def embedding_matrix(response: embedding_pb2.EmbedTextsResponse) -> np.ndarray:
    """The response's vectors as rows; an embedding service older than the packed encoding sends `values`."""
    if not response.vectors_f32:
        return np.asarray([e.values for e in response.embeddings], dtype=np.float32)
    return np.frombuffer(response.vectors_f32, dtype="<f4").reshape(len(response.embeddings), -1)


def impression_from_proto(message: retriever_pb2.Impression) -> Impression:
    return Impression(
        recommendation_id=message.recommendation_id,
        page=message.page,
        user_id=message.user_id,
        item_ids=tuple(message.item_ids),
        experiment=message.experiment,
        arm=message.arm,
        timestamp=message.timestamp,
        engaged_item_ids=tuple(message.engaged_item_ids),
        converted_item_ids=tuple(message.converted_item_ids),
    )


class RetrieverClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        self._timeout_s = timeout_s

    async def search(
        self, catalog: str, vector: np.ndarray, limit: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]:
        query = retriever_pb2.SearchQuery(
            vector=vector.tolist(),
            limit=limit,
            filter=_retriever_filter(item_filter),
            exclude_ids=list(exclude_ids),
            with_vectors=True,
            packed=True,
        )
        request = _stamped(retriever_pb2.SearchItemsRequest(queries=[query], catalog=catalog))
        response = await _call("retriever", self._stub.SearchItems, request, self._timeout_s)
        return [_found(i) for i in response.results[0].items]

    async def candidates(
        self,
        catalog: str,
        vector: np.ndarray,
        limit: int,
        item_filter: ItemFilter,
        exclude_ids: Sequence[str],
        include_ids: Sequence[str],
        history_ids: Sequence[str],
    ) -> Candidates:
        # One call, up to three queries of a batch: the nearest items, the proposed items among them that the
        # filter and exclusions allow, and the history items (restricted to their ids, nothing else applies).
        values = vector.tolist()
        nearest_query = retriever_pb2.SearchQuery(
            vector=values,
            limit=limit,
            filter=_retriever_filter(item_filter),
            exclude_ids=list(exclude_ids),
            with_vectors=True,
            packed=True,
        )
        queries = [nearest_query]
        if include_ids:
            included = retriever_pb2.SearchQuery()
            included.CopyFrom(nearest_query)
            included.limit = len(include_ids)
            included.only_ids.extend(include_ids)
            queries.append(included)
        if history_ids:
            queries.append(
                retriever_pb2.SearchQuery(
                    vector=values, limit=len(history_ids), only_ids=list(history_ids), with_vectors=True, packed=True
                )
            )
        request = _stamped(retriever_pb2.SearchItemsRequest(queries=queries, catalog=catalog))
        response = await _call("retriever", self._stub.SearchItems, request, self._timeout_s)
        nearest = [_found(i) for i in response.results[0].items]
        proposed: list[StoredItem] = []
        if include_ids:
            ids = {item.item_id for item in nearest}
            proposed = [_found(i) for i in response.results[1].items if i.item_id not in ids]
        history: list[StoredItem] = []
        if history_ids:
            found = {i.item_id: i for i in response.results[-1].items}
            history = [_found(found[item_id], score=0.0) for item_id in history_ids if item_id in found]
        return Candidates(nearest, proposed, history)

    async def similar(
        self, catalog: str, item_id: str, limit: int, item_filter: ItemFilter, exclude_ids: Sequence[str]
    ) -> list[StoredItem]:
        request = retriever_pb2.RecommendItemsRequest(
            positive_ids=[item_id],
            limit=limit,
            filter=_retriever_filter(item_filter),
            exclude_ids=list(exclude_ids),
            catalog=catalog,
        )
        response = await _call("retriever", self._stub.RecommendItems, request, self._timeout_s)
        return [_stored(i, i.score) for i in response.items]

    async def popular(
        self,
        catalog: str,
        limit: int,
        offset: int,
        item_filter: ItemFilter,
        exclude_ids: Sequence[str],
        with_vectors: bool = False,
    ) -> list[StoredItem]:
        request = retriever_pb2.ListPopularItemsRequest(
            limit=limit,
            offset=offset,
            filter=_retriever_filter(item_filter),
            exclude_ids=list(exclude_ids),
            with_vectors=with_vectors,
            catalog=catalog,
        )
        response = await _call("retriever", self._stub.ListPopularItems, request, self._timeout_s)
        return [_stored(i, i.score) for i in response.items]

    async def get_items(self, catalog: str, item_ids: Sequence[str], skip_missing: bool) -> list[StoredItem]:
        request = _stamped(
            retriever_pb2.GetItemsRequest(
                item_ids=list(item_ids), with_vectors=True, skip_missing=skip_missing, catalog=catalog
            )
        )
        response = await _call("retriever", self._stub.GetItems, request, self._timeout_s)
        return [_stored(i) for i in response.items]

    async def upsert_items(self, catalog: str, items: Sequence[NewItem]) -> int:
        request = _stamped(
            retriever_pb2.UpsertItemsRequest(
                items=[
                    retriever_pb2.Item(item_id=i.item_id, vector=i.vector.tolist(), payload=dict_to_struct(i.payload))
                    for i in items
                ],
                catalog=catalog,
                texts=[i.text for i in items] if all(i.text for i in items) else [],
            )
        )
        response = await _call("retriever", self._stub.UpsertItems, request, self._timeout_s)
        return int(response.upserted)

    async def append_events(self, catalog: str, user_id: str, events: Sequence[HistoryEvent]) -> list[str]:
        request = retriever_pb2.AppendUserEventsRequest(
            user_id=user_id,
            events=[
                retriever_pb2.UserEvent(
                    item_id=e.item_id,
                    event_type=e.event_type,
                    timestamp=e.timestamp,
                    weight=e.weight,
                    recommendation_id=e.recommendation_id,
                    event_id=e.event_id,
                )
                for e in events
            ],
            catalog=catalog,
        )
        # Every event carries its id, so a repeat counts nothing twice: a first try that ran out of time (the
        # retriever may have stored the events and answered too late) is tried once more in the time left.
        call = self._stub.AppendUserEvents
        try:
            response = await _call("retriever", call, request, self._timeout_s, FIRST_TRY_SHARE)
        except BackendUnavailableError as error:
            cause = error.__cause__
            if not (isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            response = await _call("retriever", call, request, self._timeout_s)
        return list(response.unknown_recommendation_ids)

    async def get_profile(self, catalog: str, user_id: str) -> Profile | None:
        request = retriever_pb2.GetUserProfileRequest(user_id=user_id, catalog=catalog)
        try:
            response = await _call("retriever", self._stub.GetUserProfile, request, self._timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        profile = response.profile
        serving = SERVING_ENCODER.get()
        if serving is not None and profile.vector and profile.encoder_version != serving:
            raise EncoderChangedError(profile.encoder_version)  # its vector would meet the other encoder's items
        events = tuple(HistoryEvent(e.item_id, e.event_type, e.timestamp, e.weight) for e in profile.events)
        return Profile(profile.user_id, _vector(profile.vector), events, dict(profile.shown_counts))

    async def delete_user(self, catalog: str, user_id: str) -> None:
        request = retriever_pb2.DeleteUserRequest(user_id=user_id, catalog=catalog)
        await _call("retriever", self._stub.DeleteUser, request, self._timeout_s)

    async def record_impressions(self, catalog: str, impressions: Sequence[Impression]) -> None:
        pages = [
            retriever_pb2.Impression(
                recommendation_id=impression.recommendation_id,
                page=impression.page,
                user_id=impression.user_id,
                item_ids=list(impression.item_ids),
                experiment=impression.experiment,
                arm=impression.arm,
                timestamp=impression.timestamp,
            )
            for impression in impressions
        ]
        request = retriever_pb2.RecordImpressionsRequest(catalog=catalog, impressions=pages)
        try:
            await _call("retriever", self._stub.RecordImpressions, request, self._timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            # A retriever older than the batch (a rolling upgrade): one page a call.
            for page in pages:
                single = retriever_pb2.RecordImpressionRequest(catalog=catalog, impression=page)
                await _call("retriever", self._stub.RecordImpression, single, self._timeout_s)

    async def get_impressions(self, catalog: str, recommendation_id: str) -> list[Impression]:
        request = retriever_pb2.GetImpressionsRequest(catalog=catalog, recommendation_id=recommendation_id)
        try:
            response = await _call("retriever", self._stub.GetImpressions, request, self._timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise
        return [impression_from_proto(i) for i in response.impressions]


class RankerClient:
    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._stub = ranker_pb2_grpc.RankerServiceStub(channel)
        self._timeout_s = timeout_s

    async def score(
        self,
        catalog: str,
        model_version: str,
        user_id: str,
        history: Sequence[StoredItem],
        candidates: Sequence[StoredItem],
    ) -> Ranking | None:
        """The ranker's scores; None when it has no model for the catalog (a state, not an outage)."""

        def fill(matrix: ranker_pb2.ItemMatrix, items: Sequence[StoredItem]) -> None:
            # One packed matrix: building ~200 ItemVector messages took 0.6 ms a call, stacking them 0.06 ms.
            # Filled in place: a message passed to a constructor is copied, ~300 KB here.
            rows = [(i.item_id, i.vector) for i in items if i.vector is not None]
            matrix.SetInParent()
            matrix.item_ids.extend(item_id for item_id, _ in rows)
            if rows:
                matrix.vectors_f32 = np.stack([v for _, v in rows]).astype("<f4", copy=False).tobytes()

        request = _stamped(ranker_pb2.ScoreCandidatesRequest(catalog=catalog, model_version=model_version))
        task = request.tasks.add(user_id=user_id)
        fill(task.history_matrix, history)
        fill(task.candidate_matrix, candidates)
        try:
            response = await _call("ranker", self._stub.ScoreCandidates, request, self._timeout_s, OPTIONAL_SHARE)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION and catalog:
                return None
            raise BackendUnavailableError("ranker", f"the ranker failed: {error.code().name}") from error
        scores = np.asarray(response.results[0].scores, dtype=np.float32)
        if len(scores) != len(candidates):
            # A ranker that does not read the candidates as sent (for instance one older than ItemMatrix, which
            # sees none): its scores cannot be matched to them, so the call falls back to retrieval order.
            raise BackendUnavailableError(
                "ranker", f"the ranker returned {len(scores)} scores for {len(candidates)} candidates"
            )
        return Ranking(scores, response.model_version)

    async def suggest(
        self, catalog: str, model_version: str, history_ids: Sequence[str], limit: int
    ) -> list[tuple[str, float]]:
        request = _stamped(
            ranker_pb2.SuggestCandidatesRequest(
                history_item_ids=list(history_ids), limit=limit, catalog=catalog, model_version=model_version
            )
        )
        try:
            response = await _call("ranker", self._stub.SuggestCandidates, request, self._timeout_s, OPTIONAL_SHARE)
        except grpc.aio.AioRpcError as error:
            # No model for the catalog, or a ranker older than this RPC (a rolling upgrade): no suggestions.
            if (error.code() == grpc.StatusCode.FAILED_PRECONDITION and catalog) or (
                error.code() == grpc.StatusCode.UNIMPLEMENTED
            ):
                return []
            raise BackendUnavailableError("ranker", f"the ranker failed: {error.code().name}") from error
        return list(zip(response.item_ids, response.scores, strict=True))


class EncoderTracker:
    """The encoder each catalog serves, as the retriever last said: read once per catalog, read again when the
    retriever refuses a request's vectors (a switch)."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        self._timeout_s = timeout_s
        self._serving: dict[str, str] = {}

    async def current(self, catalog: str) -> str | None:
        """The catalog's serving encoder; None for a catalog that does not exist yet (nothing to check)."""
        known = self._serving.get(catalog)
        if known is not None:
            return known
        request = retriever_pb2.GetCollectionInfoRequest(catalog=catalog)
        try:
            response = await _call("retriever", self._stub.GetCollectionInfo, request, self._timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        serving = str(response.encoders.serving)
        self._serving[catalog] = serving
        return serving

    def changed(self, catalog: str, serving: str) -> None:
        self._serving[catalog] = serving
