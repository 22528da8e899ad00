"""Loads a dataset into a running suite through the gateway's public API, with progress bars."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from tqdm import tqdm

from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from services.datasets.loaders import CatalogItem, Dataset, Interaction

T = TypeVar("T")

EVENT_TYPES = {
    "view": pb.EVENT_TYPE_VIEW,
    "click": pb.EVENT_TYPE_CLICK,
    "add_to_cart": pb.EVENT_TYPE_ADD_TO_CART,
    "purchase": pb.EVENT_TYPE_PURCHASE,
}


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def catalog_item(item: CatalogItem) -> pb.CatalogItem:
    attributes = struct_pb2.Struct()
    attributes.update({**({"brand": item.brand} if item.brand else {}), **item.attributes})
    return pb.CatalogItem(
        item_id=item.item_id,
        title=item.title,
        description=item.description,
        categories=list(item.categories),
        attributes=attributes,
    )


def event(interaction: Interaction) -> pb.Event:
    time = timestamp_pb2.Timestamp()
    time.FromNanoseconds(int(interaction.timestamp * 1e9))
    return pb.Event(
        user_id=interaction.user_id,
        item_id=interaction.item_id,
        type=EVENT_TYPES.get(interaction.event, pb.EVENT_TYPE_VIEW),
        time=time,
    )


def ingest(
    channel: grpc.Channel, dataset: Dataset, item_batch: int = 128, event_batch: int = 500, timeout_s: float = 120
) -> None:
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    with tqdm(total=len(dataset.items), desc="catalog items", unit="item") as bar:
        for items in batches(dataset.items, item_batch):
            stub.UpsertItems(pb.UpsertItemsRequest(items=[catalog_item(i) for i in items]), timeout=timeout_s)
            bar.update(len(items))
    with tqdm(total=len(dataset.interactions), desc="interactions", unit="event") as bar:
        for interactions in batches(dataset.interactions, event_batch):
            stub.RecordEvents(pb.RecordEventsRequest(events=[event(i) for i in interactions]), timeout=timeout_s)
            bar.update(len(interactions))
