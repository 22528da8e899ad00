"""What operators read beyond the gateway's API: health, a user's history, stored items, the index's state and
the recorded impressions, from the services' own gRPC APIs (asyncio). The console is built on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from recsys_client._channel import DEFAULT_DEADLINE_S, call_metadata, channel_options, credentials, new_request_id
from recsys_client.errors import error_from_rpc

RETRIEVER_SERVICE = "recsys.retriever.v1.RetrieverService"
RETRIEVER_READS = ("GetItems", "GetUserProfile", "GetCollectionInfo", "ListImpressions")
RANKER_SERVICE = "recsys.ranker.v1.RankerService"
PAGE_SIZE = 1000


@dataclass(frozen=True)
class HistoryEvent:
    item_id: str
    event_type: str
    # Unix seconds.
    timestamp: float
    recommendation_id: str


@dataclass(frozen=True)
class UserHistory:
    user_id: str
    # Oldest first.
    events: tuple[HistoryEvent, ...]
    # Item -> times shown since the user's last event on it.
    shown_counts: dict[str, int]


@dataclass(frozen=True)
class StoredItem:
    item_id: str
    # Title, categories, brand, attributes and the store's popularity count.
    payload: dict[str, Any]
    # The item's embedding (float32, the collection's dimension); None unless asked for with with_vectors.
    vector: npt.NDArray[np.float32] | None = None


@dataclass(frozen=True)
class IndexStatus:
    backend: str
    items: int
    users: int
    indexed_vectors: int
    dimension: int
    index_ready: bool
    filterable_fields: tuple[str, ...]

    @property
    def unindexed_vectors(self) -> int:
        return max(0, self.items - self.indexed_vectors)


@dataclass(frozen=True)
class Impression:
    """One shown page of a recommendation and what came of it."""

    recommendation_id: str
    page: int
    user_id: str
    item_ids: tuple[str, ...]
    experiment: str
    arm: str
    timestamp: float
    engaged_item_ids: tuple[str, ...]
    converted_item_ids: tuple[str, ...]


@dataclass(frozen=True)
class GraphNeighbour:
    """An item the ranker's item graph links to another: people with one in their history went on to it."""

    item_id: str
    # The graph's score; higher is better, comparable within one answer.
    score: float


@dataclass(frozen=True)
class ModelInfo:
    version: str
    # ISO 8601.
    created_at: str
    embedding_model: str
    available_versions: tuple[str, ...]


class _Endpoint:
    """One service's channel with the shared call conventions (deadline, request id, token, typed errors)."""

    def __init__(
        self,
        address: str,
        service: str,
        retried_methods: Sequence[str],
        token: str | None,
        tls: bool | grpc.ChannelCredentials,
        deadline: float,
    ) -> None:
        options = channel_options(service, retried_methods)
        channel_credentials = credentials(tls)
        self.channel = (
            grpc.aio.secure_channel(address, channel_credentials, options=options)
            if channel_credentials is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
        self._token = token
        self._deadline = deadline

    async def call(self, method: Any, request: Any) -> Any:
        request_id = new_request_id()
        try:
            return await method(request, timeout=self._deadline, metadata=call_metadata(self._token, request_id))
        except grpc.RpcError as error:
            raise error_from_rpc(error, request_id) from None

    async def health(self, service: str) -> str:
        """The service's health as its health service reports it ("SERVING", "NOT_SERVING", ...), or the
        status code name when it does not answer."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self._deadline)
        except grpc.RpcError as error:
            return str(error.code().name)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def close(self) -> None:
        await self.channel.close()


class AsyncOperatorClient:
    """Reads from the retriever (and, when an address is given, the ranker's model info); health of any service."""

    def __init__(
        self,
        retriever_address: str,
        *,
        ranker_address: str | None = None,
        token: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        deadline: float = DEFAULT_DEADLINE_S,
    ) -> None:
        self._token = token
        self._tls = tls
        self._deadline = deadline
        self._retriever = _Endpoint(retriever_address, RETRIEVER_SERVICE, RETRIEVER_READS, token, tls, deadline)
        self._retriever_stub = retriever_pb2_grpc.RetrieverServiceStub(self._retriever.channel)
        self._ranker = (
            _Endpoint(ranker_address, RANKER_SERVICE, ("GetModelInfo", "SuggestCandidates"), token, tls, deadline)
            if ranker_address
            else None
        )

    async def close(self) -> None:
        await self._retriever.close()
        if self._ranker is not None:
            await self._ranker.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    async def health(self, address: str, service: str) -> str:
        """Health of `service` (its full name, for example recsys.gateway.v1.GatewayService) at `address`."""
        endpoint = _Endpoint(address, service, (), self._token, self._tls, self._deadline)
        try:
            return await endpoint.health(service)
        finally:
            await endpoint.close()

    async def user_history(self, user_id: str, catalog: str = "") -> UserHistory:
        """The user's stored events, oldest first (an unknown user has none)."""
        request = retriever_pb2.GetUserProfileRequest(user_id=user_id, catalog=catalog)
        response = await self._retriever.call(self._retriever_stub.GetUserProfile, request)
        profile = response.profile
        return UserHistory(
            user_id=user_id,
            events=tuple(
                HistoryEvent(e.item_id, e.event_type, e.timestamp, e.recommendation_id) for e in profile.events
            ),
            shown_counts=dict(profile.shown_counts),
        )

    async def items(
        self, item_ids: Sequence[str], catalog: str = "", *, with_vectors: bool = False
    ) -> dict[str, StoredItem]:
        """The stored items by id; unknown ids are left out. with_vectors: each with its embedding as a float32
        array (GetItems sends it as a proto3 packed `repeated float`, little-endian float32 on the wire)."""
        if not item_ids:
            return {}
        request = retriever_pb2.GetItemsRequest(
            item_ids=list(item_ids), with_vectors=with_vectors, skip_missing=True, catalog=catalog
        )
        response = await self._retriever.call(self._retriever_stub.GetItems, request)
        return {
            item.item_id: StoredItem(
                item.item_id,
                json_format.MessageToDict(item.payload),
                np.asarray(item.vector, dtype=np.float32) if with_vectors else None,
            )
            for item in response.items
        }

    async def index_status(self, catalog: str = "") -> IndexStatus:
        request = retriever_pb2.GetCollectionInfoRequest(catalog=catalog)
        info = await self._retriever.call(self._retriever_stub.GetCollectionInfo, request)
        return IndexStatus(
            backend=info.backend,
            items=info.items,
            users=info.users,
            indexed_vectors=info.indexed_vectors,
            dimension=info.dimension,
            index_ready=info.index_ready,
            filterable_fields=tuple(field.name for field in info.payload_fields),
        )

    async def impressions(
        self, catalog: str = "", experiment: str = "", limit: int = 100_000
    ) -> AsyncIterator[Impression]:
        """Recorded impressions (of one experiment, or all), at most `limit`, page by page."""
        token = ""
        seen = 0
        while seen < limit:
            request = retriever_pb2.ListImpressionsRequest(
                catalog=catalog, experiment=experiment, limit=min(PAGE_SIZE, limit - seen), page_token=token
            )
            response = await self._retriever.call(self._retriever_stub.ListImpressions, request)
            for message in response.impressions:
                seen += 1
                yield Impression(
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
            token = response.next_page_token
            if not token:
                return

    async def model_info(self, catalog: str = "") -> ModelInfo | None:
        """The ranker's serving model version; None when no ranker address was given."""
        if self._ranker is None:
            return None
        stub = ranker_pb2_grpc.RankerServiceStub(self._ranker.channel)
        response = await self._ranker.call(stub.GetModelInfo, ranker_pb2.GetModelInfoRequest(catalog=catalog))
        return ModelInfo(
            response.version, response.created_at, response.embedding_model, tuple(response.available_versions)
        )

    async def graph_neighbours(self, item_id: str, catalog: str = "", limit: int = 10) -> list[GraphNeighbour] | None:
        """The items the ranker's item graph links to `item_id`, best first; None when no ranker address was
        given."""
        if self._ranker is None:
            return None
        stub = ranker_pb2_grpc.RankerServiceStub(self._ranker.channel)
        request = ranker_pb2.SuggestCandidatesRequest(history_item_ids=[item_id], limit=limit, catalog=catalog)
        response = await self._ranker.call(stub.SuggestCandidates, request)
        return [GraphNeighbour(i, s) for i, s in zip(response.item_ids, response.scores, strict=True)]
