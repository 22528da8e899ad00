"""gRPC transport of the gateway: converts between the public protos and the domain."""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import time

import grpc

from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from services.common.attributes import AttributeValue
from services.common.errors import InvalidArgumentError
from services.common.structs import struct_to_dict
from services.gateway.model import (
    MAX_RECOMMENDATION_ID_CHARS,
    CatalogRecord,
    EventRecord,
    ItemFilter,
    Recommendation,
    RecommendResult,
)
from services.gateway.recommender import PageRef, Recommender, RecommendQuery
from services.gateway.rules import Boost, Pin, Rules, category_warnings

EVENT_TYPES = {
    pb.EVENT_TYPE_UNSPECIFIED: "view",
    pb.EVENT_TYPE_VIEW: "view",
    pb.EVENT_TYPE_CLICK: "click",
    pb.EVENT_TYPE_ADD_TO_CART: "add_to_cart",
    pb.EVENT_TYPE_PURCHASE: "purchase",
}
_PAGE_PREFIX = "rec:"


def request_fingerprint(request: pb.RecommendRequest) -> str:
    """What binds a page token to its request: a hash of every field but the token itself."""
    fields = pb.RecommendRequest()
    fields.CopyFrom(request)
    fields.ClearField("page_token")
    return hashlib.sha256(fields.SerializeToString(deterministic=True)).hexdigest()[:16]


def encode_page_token(page: PageRef, fingerprint: str) -> str:
    text = f"{_PAGE_PREFIX}{fingerprint}:{page.recommendation_id}:{page.page}"
    return base64.urlsafe_b64encode(text.encode()).decode()


def decode_page_token(token: str, fingerprint: str) -> PageRef | None:
    """The page a token asks for; None for no token (the first page). A token issued for a request with other
    fields (user, query, k, filter, rules) is refused: its pages would silently answer another request."""
    if not token:
        return None
    page, bound_to = _read_page_token(token)
    if bound_to != fingerprint:
        raise InvalidArgumentError(
            "page_token belongs to a different request: send the request that returned it with only page_token "
            "changed, or no page_token for a new first page"
        )
    return page


def _read_page_token(token: str) -> tuple[PageRef, str]:
    """The page and the request fingerprint a token carries."""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        if text.startswith(_PAGE_PREFIX):
            bound_to, rest = text.removeprefix(_PAGE_PREFIX).split(":", 1)
            recommendation_id, page = rest.rsplit(":", 1)
            number = int(page)
            if recommendation_id and len(recommendation_id) <= MAX_RECOMMENDATION_ID_CHARS and 2 <= number <= 10_000:
                return PageRef(recommendation_id, number), bound_to
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidArgumentError("page_token is not one this service issued: pass next_page_token back unchanged")


def to_rules(request: pb.RecommendRequest) -> Rules:
    return Rules(
        boosts=tuple(Boost(b.weight, b.category, b.field, b.value) for b in request.boosts),
        pins=tuple(Pin(p.item_id, p.position) for p in request.pins),
        blocked=tuple(request.blocked_item_ids),
        diversity=request.diversity,
        max_per_category=request.max_per_category,
    )


def to_filter(message: pb.Filter) -> ItemFilter:
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for r in message.ranges:
        ranges[r.field] = (r.gte if r.HasField("gte") else None, r.lte if r.HasField("lte") else None)
    return ItemFilter(
        categories_any=tuple(message.categories_any),
        keywords={k.field: tuple(k.any_of) for k in message.keywords},
        ranges=ranges,
        flags={f.field: f.value for f in message.flags},
    )


def _attributes(item: pb.CatalogItem, index: int) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {}
    raw = struct_to_dict(item.attributes)
    for key, value in raw.items():
        if isinstance(value, bool | str):
            attributes[key] = value
        elif isinstance(value, int | float) and math.isfinite(value):
            attributes[key] = float(value)
        else:
            raise InvalidArgumentError(
                f"items[{index}].attributes.{key} must be a string, a finite number or a boolean"
            )
    return attributes


def _item(r: Recommendation) -> pb.RecommendedItem:
    return pb.RecommendedItem(
        item_id=r.item_id, score=r.score, reason=r.reason, title=r.title, categories=list(r.categories)
    )


def _recommended(r: Recommendation, result: RecommendResult, explain: bool) -> pb.RecommendedItem:
    item = _item(r)
    item.pinned = r.pinned
    if explain:
        item.explanation.CopyFrom(
            pb.Explanation(stage_scores=dict(r.stage_scores), evidence=r.evidence, arm=result.arm)
        )
    return item


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, recommender: Recommender) -> None:
        self._recommender = recommender

    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        fingerprint = request_fingerprint(request)
        result = await self._recommender.recommend(
            RecommendQuery(
                user_id=request.user_id,
                query=request.query,
                k=request.k,
                item_filter=to_filter(request.filter),
                exclude_seen=request.exclude_seen if request.HasField("exclude_seen") else True,
                catalog=request.catalog,
                context_item_ids=tuple(request.context_item_ids),
                rules=to_rules(request),
                explain=request.explain,
                page=decode_page_token(request.page_token, fingerprint),
            )
        )
        next_page = PageRef(result.recommendation_id, result.page + 1)
        return pb.RecommendResponse(
            items=[_recommended(r, result, request.explain) for r in result.items],
            next_page_token=encode_page_token(next_page, fingerprint) if result.has_more and result.items else "",
            strategy=result.strategy,
            model_version=result.model_version,
            degraded=bool(result.degraded),
            degraded_stages=list(result.degraded),
            recommendation_id=result.recommendation_id,
            experiment=result.experiment,
            arm=result.arm,
            page=result.page,
            stage_ms=dict(result.stage_ms),
            warnings=list(result.warnings),
        )

    async def GetSimilarItems(
        self, request: pb.GetSimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSimilarItemsResponse:
        item_filter = to_filter(request.filter)
        found = await self._recommender.similar_items(request.item_id, request.k, item_filter, request.catalog)
        warnings = category_warnings(Rules(), item_filter, [r.categories for r in found])
        return pb.GetSimilarItemsResponse(items=[_item(r) for r in found], warnings=warnings)

    async def SearchItems(
        self, request: pb.SearchItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchItemsResponse:
        item_filter = to_filter(request.filter)
        found = await self._recommender.search(request.query, request.k, item_filter, request.catalog)
        return pb.SearchItemsResponse(
            items=[_item(r) for r in found.items],
            degraded=bool(found.degraded),
            degraded_stages=list(found.degraded),
            warnings=category_warnings(Rules(), item_filter, [r.categories for r in found.items]),
        )

    async def UpsertItems(
        self, request: pb.UpsertItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertItemsResponse:
        records = [
            CatalogRecord(
                item_id=item.item_id,
                title=item.title,
                description=item.description,
                categories=tuple(item.categories),
                attributes=_attributes(item, index),
            )
            for index, item in enumerate(request.items)
        ]
        upserted, truncated = await self._recommender.upsert_items(records, request.catalog)
        return pb.UpsertItemsResponse(upserted=upserted, truncated=truncated)

    async def RecordEvents(
        self, request: pb.RecordEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordEventsResponse:
        now = time.time()
        events = []
        for index, event in enumerate(request.events):
            if event.type not in EVENT_TYPES:
                raise InvalidArgumentError(f"events[{index}].type {event.type} is not a known EventType")
            timestamp = event.time.seconds + event.time.nanos / 1e9 if event.HasField("time") else now
            events.append(
                EventRecord(
                    event.user_id,
                    event.item_id,
                    EVENT_TYPES[event.type],
                    timestamp,
                    event.recommendation_id,
                    event.event_id,
                )
            )
        result = await self._recommender.record_events(events, request.catalog)
        return pb.RecordEventsResponse(
            recorded=result.recorded, unknown_recommendation_ids=result.unknown_recommendation_ids
        )

    async def DeleteUser(
        self, request: pb.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteUserResponse:
        await self._recommender.delete_user(request.user_id, request.catalog)
        return pb.DeleteUserResponse()
