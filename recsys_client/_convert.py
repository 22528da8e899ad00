"""Dataclasses to gateway protos and back; shared by the sync and asyncio clients."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from google.protobuf import struct_pb2, timestamp_pb2

from recsys.gateway.v1 import gateway_pb2 as pb
from recsys_client.types import (
    Boost,
    CatalogItem,
    Event,
    Explanation,
    Filter,
    Pin,
    Recommendations,
    RecommendedItem,
    RecordResult,
    SearchResults,
    SimilarItems,
    UpsertResult,
)

EVENT_TYPES = {
    "view": pb.EVENT_TYPE_VIEW,
    "click": pb.EVENT_TYPE_CLICK,
    "add_to_cart": pb.EVENT_TYPE_ADD_TO_CART,
    "purchase": pb.EVENT_TYPE_PURCHASE,
}


def filter_proto(conditions: Filter | None) -> pb.Filter | None:
    if conditions is None:
        return None
    return pb.Filter(
        categories_any=list(conditions.categories_any),
        keywords=[pb.KeywordFilter(field=name, any_of=list(values)) for name, values in conditions.keywords.items()],
        ranges=[pb.RangeFilter(field=name, gte=low, lte=high) for name, (low, high) in conditions.ranges.items()],
        flags=[pb.FlagFilter(field=name, value=value) for name, value in conditions.flags.items()],
    )


def recommend_request(
    *,
    user_id: str,
    k: int,
    query: str,
    filter: Filter | None,
    exclude_seen: bool | None,
    page_token: str,
    catalog: str,
    context_item_ids: Sequence[str],
    diversity: float,
    max_per_category: int,
    boosts: Sequence[Boost],
    pins: Sequence[Pin],
    blocked_item_ids: Sequence[str],
    explain: bool,
) -> pb.RecommendRequest:
    return pb.RecommendRequest(
        user_id=user_id,
        query=query,
        k=k,
        filter=filter_proto(filter),
        exclude_seen=exclude_seen,
        page_token=page_token,
        catalog=catalog,
        context_item_ids=list(context_item_ids),
        diversity=diversity,
        max_per_category=max_per_category,
        boosts=[pb.Boost(category=b.category, field=b.field, value=b.value, weight=b.weight) for b in boosts],
        pins=[pb.Pin(item_id=p.item_id, position=p.position) for p in pins],
        blocked_item_ids=list(blocked_item_ids),
        explain=explain,
    )


def upsert_request(items: Iterable[CatalogItem], catalog: str) -> pb.UpsertItemsRequest:
    records = []
    for item in items:
        attributes = struct_pb2.Struct()
        attributes.update(dict(item.attributes))
        records.append(
            pb.CatalogItem(
                item_id=item.item_id,
                title=item.title,
                description=item.description,
                categories=list(item.categories),
                attributes=attributes,
            )
        )
    return pb.UpsertItemsRequest(items=records, catalog=catalog)


def events_request(events: Iterable[Event], catalog: str) -> pb.RecordEventsRequest:
    protos = []
    for event in events:
        if event.type not in EVENT_TYPES:
            raise ValueError(f"event type {event.type!r} is not one of {', '.join(EVENT_TYPES)}")
        time = None
        if event.time is not None:
            time = timestamp_pb2.Timestamp()
            time.FromDatetime(event.time)
        protos.append(
            pb.Event(
                user_id=event.user_id,
                item_id=event.item_id,
                type=EVENT_TYPES[event.type],
                time=time,
                recommendation_id=event.recommendation_id,
                # Named once here, so every retry of this request carries the same ids and counts once.
                event_id=event.event_id or uuid.uuid4().hex,
            )
        )
    return pb.RecordEventsRequest(events=protos, catalog=catalog)


def recommended_item(item: pb.RecommendedItem) -> RecommendedItem:
    explanation = None
    if item.HasField("explanation"):
        explanation = Explanation(
            stage_scores=dict(item.explanation.stage_scores),
            evidence=item.explanation.evidence,
            arm=item.explanation.arm,
        )
    return RecommendedItem(
        item_id=item.item_id,
        score=item.score,
        reason=item.reason,
        title=item.title,
        categories=tuple(item.categories),
        pinned=item.pinned,
        explanation=explanation,
    )


def recommendations(response: pb.RecommendResponse) -> Recommendations:
    return Recommendations(
        items=tuple(recommended_item(item) for item in response.items),
        next_page_token=response.next_page_token,
        strategy=response.strategy,
        model_version=response.model_version,
        degraded=response.degraded,
        degraded_stages=tuple(response.degraded_stages),
        recommendation_id=response.recommendation_id,
        experiment=response.experiment,
        arm=response.arm,
        page=response.page,
        stage_ms=dict(response.stage_ms),
        warnings=tuple(response.warnings),
    )


def search_results(response: pb.SearchItemsResponse) -> SearchResults:
    return SearchResults(
        items=tuple(recommended_item(item) for item in response.items),
        degraded=response.degraded,
        degraded_stages=tuple(response.degraded_stages),
        warnings=tuple(response.warnings),
    )


def similar_items(response: pb.GetSimilarItemsResponse) -> SimilarItems:
    items = tuple(recommended_item(item) for item in response.items)
    return SimilarItems(items=items, warnings=tuple(response.warnings))


def upsert_result(response: pb.UpsertItemsResponse) -> UpsertResult:
    return UpsertResult(upserted=response.upserted, truncated=response.truncated)


def record_result(response: pb.RecordEventsResponse) -> RecordResult:
    return RecordResult(
        recorded=response.recorded, unknown_recommendation_ids=tuple(response.unknown_recommendation_ids)
    )
