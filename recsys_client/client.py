"""The gateway's API as Python calls: `RecsysClient` (blocking) and `AsyncRecsysClient` (asyncio).

Every call has a deadline (the client's `deadline` in seconds, or the call's), a request id (sent as
`x-request-id`, new for each call unless given, carried by any error), and the bearer token when one is set.
Retried on UNAVAILABLE, because repeating them is safe: the reads (recommend, similar_items, search);
upsert_items, since it replaces each item by its id, so a repeat after a lost answer writes the same records
again and leaves the catalog as one call would (the item's popularity survives a replace); and record_events,
since every event carries an event_id (given by the client when the caller has none) and the gateway counts a
repeated id once. delete_user is not retried: a repeat after a lost answer would say NOT_FOUND.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, Self

import grpc

from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from recsys_client import _convert
from recsys_client._channel import DEFAULT_DEADLINE_S, call_metadata, channel_options, credentials, new_request_id
from recsys_client.errors import error_from_rpc
from recsys_client.types import (
    Boost,
    CatalogItem,
    Event,
    Filter,
    Pin,
    Recommendations,
    RecordResult,
    SearchResults,
    SimilarItems,
    UpsertResult,
)

SERVICE = "recsys.gateway.v1.GatewayService"
RETRIED_METHODS = ("Recommend", "GetSimilarItems", "SearchItems", "UpsertItems", "RecordEvents")


class RecsysClient:
    """A blocking client of the gateway. Use it as a context manager, or call close()."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        deadline: float = DEFAULT_DEADLINE_S,
    ) -> None:
        options = channel_options(SERVICE, RETRIED_METHODS)
        channel_credentials = credentials(tls)
        self._channel = (
            grpc.secure_channel(address, channel_credentials, options=options)
            if channel_credentials is not None
            else grpc.insecure_channel(address, options=options)
        )
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._token = token
        self._deadline = deadline

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _call(self, method: Any, request: Any, deadline: float | None, request_id: str | None) -> Any:
        request_id = request_id or new_request_id()
        try:
            return method(request, timeout=deadline or self._deadline, metadata=call_metadata(self._token, request_id))
        except grpc.RpcError as error:
            raise error_from_rpc(error, request_id) from None

    def recommend(
        self,
        user_id: str = "",
        *,
        k: int = 10,
        query: str = "",
        filter: Filter | None = None,
        exclude_seen: bool | None = None,
        page_token: str = "",
        catalog: str = "",
        context_item_ids: Sequence[str] = (),
        diversity: float = 0.0,
        max_per_category: int = 0,
        boosts: Sequence[Boost] = (),
        pins: Sequence[Pin] = (),
        blocked_item_ids: Sequence[str] = (),
        explain: bool = False,
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> Recommendations:
        """Recommendations for a user, an anonymous session (context_item_ids: the cart, the screen), a query, or
        any mix; popular items without any. The README's "Recommendation options" explains each option."""
        request = _convert.recommend_request(
            user_id=user_id,
            k=k,
            query=query,
            filter=filter,
            exclude_seen=exclude_seen,
            page_token=page_token,
            catalog=catalog,
            context_item_ids=context_item_ids,
            diversity=diversity,
            max_per_category=max_per_category,
            boosts=boosts,
            pins=pins,
            blocked_item_ids=blocked_item_ids,
            explain=explain,
        )
        return _convert.recommendations(self._call(self._stub.Recommend, request, deadline, request_id))

    def similar_items(
        self,
        item_id: str,
        *,
        k: int = 10,
        filter: Filter | None = None,
        catalog: str = "",
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> SimilarItems:
        """Items most like `item_id` (NotFoundError when unknown)."""
        request = pb.GetSimilarItemsRequest(item_id=item_id, k=k, filter=_convert.filter_proto(filter), catalog=catalog)
        return _convert.similar_items(self._call(self._stub.GetSimilarItems, request, deadline, request_id))

    def search(
        self,
        query: str,
        *,
        k: int = 10,
        filter: Filter | None = None,
        catalog: str = "",
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> SearchResults:
        """Items matching a free-text query by meaning."""
        request = pb.SearchItemsRequest(query=query, k=k, filter=_convert.filter_proto(filter), catalog=catalog)
        return _convert.search_results(self._call(self._stub.SearchItems, request, deadline, request_id))

    def upsert_items(
        self,
        items: Iterable[CatalogItem],
        *,
        catalog: str = "",
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> UpsertResult:
        """Adds or replaces catalog items; they can be recommended once this returns."""
        request = _convert.upsert_request(items, catalog)
        return _convert.upsert_result(self._call(self._stub.UpsertItems, request, deadline, request_id))

    def record_events(
        self,
        events: Iterable[Event],
        *,
        catalog: str = "",
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> RecordResult:
        """Records interactions (all checked before any is stored): how many were recorded, and the
        recommendation ids among them the suite never issued. Safe to repeat: an event recorded again under its
        event_id counts once."""
        request = _convert.events_request(events, catalog)
        return _convert.record_result(self._call(self._stub.RecordEvents, request, deadline, request_id))

    def delete_user(
        self, user_id: str, *, catalog: str = "", deadline: float | None = None, request_id: str | None = None
    ) -> None:
        """Removes every trace of a user (NotFoundError when unknown)."""
        request = pb.DeleteUserRequest(user_id=user_id, catalog=catalog)
        self._call(self._stub.DeleteUser, request, deadline, request_id)


class AsyncRecsysClient:
    """The asyncio client of the gateway: the same calls as RecsysClient, awaited. Use `async with`, or await
    close()."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        deadline: float = DEFAULT_DEADLINE_S,
    ) -> None:
        options = channel_options(SERVICE, RETRIED_METHODS)
        channel_credentials = credentials(tls)
        self._channel = (
            grpc.aio.secure_channel(address, channel_credentials, options=options)
            if channel_credentials is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._token = token
        self._deadline = deadline

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    async def _call(self, method: Any, request: Any, deadline: float | None, request_id: str | None) -> Any:
        request_id = request_id or new_request_id()
        try:
            return await method(
                request, timeout=deadline or self._deadline, metadata=call_metadata(self._token, request_id)
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error, request_id) from None

    async def recommend(
        self,
        user_id: str = "",
        *,
        k: int = 10,
        query: str = "",
        filter: Filter | None = None,
        exclude_seen: bool | None = None,
        page_token: str = "",
        catalog: str = "",
        context_item_ids: Sequence[str] = (),
        diversity: float = 0.0,
        max_per_category: int = 0,
        boosts: Sequence[Boost] = (),
        pins: Sequence[Pin] = (),
        blocked_item_ids: Sequence[str] = (),
        explain: bool = False,
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> Recommendations:
        """See RecsysClient.recommend."""
        request = _convert.recommend_request(
            user_id=user_id,
            k=k,
            query=query,
            filter=filter,
            exclude_seen=exclude_seen,
            page_token=page_token,
            catalog=catalog,
            context_item_ids=context_item_ids,
            diversity=diversity,
            max_per_category=max_per_category,
            boosts=boosts,
            pins=pins,
            blocked_item_ids=blocked_item_ids,
            explain=explain,
        )
        return _convert.recommendations(await self._call(self._stub.Recommend, request, deadline, request_id))

    async def similar_items(
        self,
        item_id: str,
        *,
        k: int = 10,
        filter: Filter | None = None,
        catalog: str = "",
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> SimilarItems:
        """See RecsysClient.similar_items."""
        request = pb.GetSimilarItemsRequest(item_id=item_id, k=k, filter=_convert.filter_proto(filter), catalog=catalog)
        return _convert.similar_items(await self._call(self._stub.GetSimilarItems, request, deadline, request_id))

    async def search(
        self,
        query: str,
        *,
        k: int = 10,
        filter: Filter | None = None,
        catalog: str = "",
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> SearchResults:
        """See RecsysClient.search."""
        request = pb.SearchItemsRequest(query=query, k=k, filter=_convert.filter_proto(filter), catalog=catalog)
        return _convert.search_results(await self._call(self._stub.SearchItems, request, deadline, request_id))

    async def upsert_items(
        self,
        items: Iterable[CatalogItem],
        *,
        catalog: str = "",
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> UpsertResult:
        """See RecsysClient.upsert_items."""
        request = _convert.upsert_request(items, catalog)
        return _convert.upsert_result(await self._call(self._stub.UpsertItems, request, deadline, request_id))

    async def record_events(
        self,
        events: Iterable[Event],
        *,
        catalog: str = "",
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> RecordResult:
        """See RecsysClient.record_events."""
        request = _convert.events_request(events, catalog)
        return _convert.record_result(await self._call(self._stub.RecordEvents, request, deadline, request_id))

    async def delete_user(
        self, user_id: str, *, catalog: str = "", deadline: float | None = None, request_id: str | None = None
    ) -> None:
        """See RecsysClient.delete_user."""
        request = pb.DeleteUserRequest(user_id=user_id, catalog=catalog)
        await self._call(self._stub.DeleteUser, request, deadline, request_id)
