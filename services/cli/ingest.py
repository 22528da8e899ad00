"""Loads a dataset into a running suite through the gateway's public API (recsys_client), with progress bars."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from tqdm import tqdm

from recsys_client import CatalogItem as ClientItem
from recsys_client import Event, RecsysClient
from recsys_client.types import EventType
from services.datasets.loaders import CatalogItem, Dataset, Interaction

T = TypeVar("T")

# The datasets' event names as the client's event types; any other name counts as a view.
EVENT_TYPES: dict[str, EventType] = {
    "view": "view",
    "click": "click",
    "add_to_cart": "add_to_cart",
    "purchase": "purchase",
}


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def catalog_item(item: CatalogItem) -> ClientItem:
    attributes = {**({"brand": item.brand} if item.brand else {}), **item.attributes}
    return ClientItem(
        item_id=item.item_id,
        title=item.title,
        description=item.description,
        categories=list(item.categories),
        attributes=attributes,
    )


def event(interaction: Interaction) -> Event:
    return Event(
        user_id=interaction.user_id,
        item_id=interaction.item_id,
        type=EVENT_TYPES.get(interaction.event, "view"),
        time=datetime.fromtimestamp(interaction.timestamp, UTC),
    )


def ingest(
    client: RecsysClient,
    dataset: Dataset,
    item_batch: int = 128,
    event_batch: int = 500,
    deadline_s: float = 120,
    catalog: str = "",
) -> None:
    with tqdm(total=len(dataset.items), desc="catalog items", unit="item") as bar:
        for items in batches(dataset.items, item_batch):
            client.upsert_items([catalog_item(i) for i in items], deadline=deadline_s, catalog=catalog)
            bar.update(len(items))
    with tqdm(total=len(dataset.interactions), desc="interactions", unit="event") as bar:
        for interactions in batches(dataset.interactions, event_batch):
            client.record_events([event(i) for i in interactions], deadline=deadline_s, catalog=catalog)
            bar.update(len(interactions))
