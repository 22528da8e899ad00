"""The server backend: a Qdrant server or cluster through qdrant-client (three collections, `items`, `users`
and `feedback`, the impressions as vectorless points). The same code runs against the client's local mode
(`:memory:` or a folder), which is how the tests exercise it; local mode is a pure-Python engine for small
data only. Named catalogs use the same three collections with the catalog's prefix (`with_prefix`).

Index building is the server's own business (its optimizers run in the background), so `index_ready` is True.
Users, events and impressions follow `eventlog.py` (a fourth collection, `events`): no write reads a value to
write it back changed, so any number of service replicas can write to one server at once. Local mode is a
plain Python engine that is not thread-safe: every call to one local client is serialised by a lock that
belongs to the client (what a server's own locking gives), never held across calls.
"""

from __future__ import annotations

import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from qdrant_client import QdrantClient, models

from services.common.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from services.retriever import eventlog, feedback
from services.retriever.eventlog import EventLog
from services.retriever.store import (
    CATEGORIES_FIELD,
    DEFAULT_SCHEMA,
    ITEM_ID_FIELD,
    POPULARITY_FIELD,
    STAGED_BEHIND_FIELD,
    USER_ID_FIELD,
    DimensionMismatchError,
    EncoderMismatchError,
    EncoderState,
    FieldType,
    Filter,
    Impression,
    Item,
    PayloadSchema,
    ScoredItem,
    SearchQuery,
    StoreInfo,
    UserEvent,
    UserProfile,
    as_vector,
    check_caught_up,
    check_encoder,
    check_staged,
    encoder_label,
    in_requested_order,
    item_payload,
    item_point_id,
    listed_item,
    not_found,
    payload_item_id,
    popularity_of,
    public_payload,
    reads_staged,
    scored_item,
    staged_writes,
    unique,
    user_point_id,
    validate_filter,
    validate_ids,
    validate_items,
    validate_limit,
    validate_search_query,
    validate_store_settings,
)

log = structlog.get_logger(__name__)

_SCHEMA_TYPES: Mapping[FieldType, models.PayloadSchemaType] = {
    FieldType.KEYWORD: models.PayloadSchemaType.KEYWORD,
    FieldType.FLOAT: models.PayloadSchemaType.FLOAT,
    FieldType.INTEGER: models.PayloadSchemaType.INTEGER,
    FieldType.BOOL: models.PayloadSchemaType.BOOL,
}


USER_INDEXES = {eventlog.STATE_FIELD: FieldType.KEYWORD, eventlog.IMPRESSIONS_FIELD: FieldType.INTEGER}
FEEDBACK_INDEXES = {**dict.fromkeys(feedback.INDEXED_FIELDS, FieldType.KEYWORD), "timestamp": FieldType.FLOAT}
EVENT_INDEXES = {
    **dict.fromkeys(eventlog.EVENT_KEYWORD_FIELDS, FieldType.KEYWORD),
    eventlog.TIMESTAMP_FIELD: FieldType.FLOAT,
}
# On a cluster (deploy/ prod: each shard on 2 peers) the event log needs the replicas of a shard to apply
# writes in one order, and each acknowledged write in what the next read sees (docs/reliability.md): every
# write goes through the shard's leader, each collection is created with a write_consistency_factor of its
# replication factor, and the event log reads from a majority of the replicas. Local mode ignores all three.
ORDERED = models.WriteOrdering.STRONG
# How long a replica trusts what it last read of the serving alias. A switch made through another replica
# reaches this one's searches within it; meanwhile they keep reading the previous copy, which stays whole.
ENCODER_STATE_TTL_S = 2.0
# `<items>--<encoder version>` holds the items embedded by that encoder; `<items>` is the base encoder's.
ENCODER_SEPARATOR = "--"
SERVING_ALIAS_SUFFIX = "-serving"


@dataclass(frozen=True, slots=True)
class _Copies:
    """The items' collections by encoder: the served one (the alias's target) and the staged one, if any."""

    serving: str
    serving_collection: str
    staged: str | None
    staged_collection: str | None


CONSISTENT = models.ReadConsistencyType.MAJORITY
# One lock per local-mode client, shared by every store on it.
_LOCAL_ENGINE_LOCKS: weakref.WeakKeyDictionary[QdrantClient, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _local_engine_lock(client: QdrantClient) -> threading.RLock:
    with _LOCKS_LOCK:
        return _LOCAL_ENGINE_LOCKS.setdefault(client, threading.RLock())


def to_client_filter(
    filter: Filter | None, exclude: Iterable[uuid.UUID] = (), only: Iterable[uuid.UUID] = ()
) -> models.Filter | None:
    """Our (validated) filter as qdrant-client's: every condition and the allowed ids (when any) in `must`,
    excluded ids in `must_not`."""
    allowed: list[models.ExtendedPointId] = [str(i) for i in only]
    must: list[models.Condition] = [models.HasIdCondition(has_id=allowed)] if allowed else []
    if filter is not None:
        if filter.categories_any:
            must.append(
                models.FieldCondition(key=CATEGORIES_FIELD, match=models.MatchAny(any=list(filter.categories_any)))
            )
        for name, values in filter.keywords.items():
            must.append(models.FieldCondition(key=name, match=models.MatchAny(any=list(values))))
        for name, (gte, lte) in filter.ranges.items():
            must.append(models.FieldCondition(key=name, range=models.Range(gte=gte, lte=lte)))
        for name, flag in filter.flags.items():
            must.append(models.FieldCondition(key=name, match=models.MatchValue(value=flag)))
    ids: list[models.ExtendedPointId] = [str(i) for i in exclude]
    must_not: list[models.Condition] = [models.HasIdCondition(has_id=ids)] if ids else []
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


def _match(field: str, value: str | bool) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(key=field, match=models.MatchValue(value=value))])


def _pids(ids: Iterable[uuid.UUID]) -> list[models.ExtendedPointId]:
    return [str(i) for i in ids]


def _item_pids(ids: Iterable[str]) -> list[models.ExtendedPointId]:
    return _pids(item_point_id(i) for i in ids)


class ClientVectorStore:
    """`VectorStore` on a Qdrant server (or qdrant-client's local mode)."""

    backend = "qdrant-client"

    def __init__(
        self,
        client: QdrantClient,
        *,
        dimension: int,
        items_collection: str = "items",
        users_collection: str = "users",
        feedback_collection: str = "feedback",
        events_collection: str = "events",
        schema: PayloadSchema = DEFAULT_SCHEMA,
        shard_number: int | None = None,
        replication_factor: int | None = None,
        max_history: int = 200,
        half_life_events: float = 50.0,
        owns_client: bool = False,
    ) -> None:
        validate_store_settings(dimension, max_history, half_life_events)
        if schema.get(POPULARITY_FIELD, FieldType.INTEGER) is not FieldType.INTEGER:
            raise InvalidArgumentError(f"schema field {POPULARITY_FIELD!r} is kept by the store and must be integer")
        self._client = client
        self._owns_client = owns_client
        self._dimension = dimension
        self._schema: PayloadSchema = dict(schema)
        self._items_base = items_collection
        self._serving_alias = items_collection + SERVING_ALIAS_SUFFIX
        self._copies: tuple[_Copies, float] | None = None
        self._users = users_collection
        self._feedback = feedback_collection
        self._events = events_collection
        self._shard_number = shard_number
        self._replication_factor = replication_factor
        self._max_history = max_history
        self._half_life = half_life_events
        options = client.init_options
        self._local = options.get("location") == ":memory:" or options.get("path") is not None
        self._engine_lock = _local_engine_lock(client) if self._local else None
        self._closed = False
        self._ensure_collection(
            self._read_copies().serving_collection, shard_number, replication_factor, indexes=self._index_fields()
        )
        self._ensure_collection(self._users, shard_number, replication_factor, indexes=USER_INDEXES)
        self._ensure_collection(self._feedback, shard_number, replication_factor, indexes=FEEDBACK_INDEXES)
        self._ensure_collection(self._events, shard_number, replication_factor, indexes=EVENT_INDEXES)
        self._log = EventLog(_ClientLog(self), max_history, half_life_events)
        self._log.migrate()  # collections written before the event log existed

    @classmethod
    def from_url(
        cls,
        url: str,
        api_key: str | None = None,
        *,
        dimension: int,
        timeout: int | None = None,
        prefer_grpc: bool = False,
        **kwargs: Any,
    ) -> ClientVectorStore:
        """A store on the Qdrant server or cluster at `url` (the store closes the client it made)."""
        client = QdrantClient(url=url, api_key=api_key, timeout=timeout, prefer_grpc=prefer_grpc)
        return cls(client, dimension=dimension, owns_client=True, **kwargs)

    @classmethod
    def local(cls, path_or_memory: str | Path = ":memory:", *, dimension: int, **kwargs: Any) -> ClientVectorStore:
        """A store on qdrant-client's local mode: `":memory:"` or a folder (tests and small demos only)."""
        if str(path_or_memory) == ":memory:":
            client = QdrantClient(location=":memory:", force_disable_check_same_thread=True)
        else:
            client = QdrantClient(path=str(path_or_memory), force_disable_check_same_thread=True)
        return cls(client, dimension=dimension, owns_client=True, **kwargs)

    @property
    def client(self) -> QdrantClient:
        return self._client

    def with_prefix(self, prefix: str) -> ClientVectorStore:
        """A store with the same settings on the same client, on collections `<prefix>items`, `<prefix>users`,
        `<prefix>feedback` and `<prefix>events` (created when missing); it leaves the client to this store."""
        return ClientVectorStore(
            self._client,
            dimension=self._dimension,
            items_collection=f"{prefix}items",
            users_collection=f"{prefix}users",
            feedback_collection=f"{prefix}feedback",
            events_collection=f"{prefix}events",
            schema=self._schema,
            shard_number=self._shard_number,
            replication_factor=self._replication_factor,
            max_history=self._max_history,
            half_life_events=self._half_life,
        )

    # -- encoder copies ------------------------------------------------------------------------------------

    def _collection_of(self, version: str) -> str:
        return self._items_base if version == "" else f"{self._items_base}{ENCODER_SEPARATOR}{version}"

    def _version_of(self, collection: str) -> str:
        return collection.removeprefix(self._items_base).removeprefix(ENCODER_SEPARATOR)

    def _read_copies(self) -> _Copies:
        """Reads the serving alias and the items' collections from the server (and remembers them)."""
        with self._engine():
            aliases = {a.alias_name: a.collection_name for a in self._client.get_aliases().aliases}
            names = {c.name for c in self._client.get_collections().collections}
        serving_collection = aliases.get(self._serving_alias, self._items_base)
        others = sorted(
            n
            for n in names
            if n != serving_collection and (n == self._items_base or n.startswith(self._items_base + ENCODER_SEPARATOR))
        )
        staged = others[0] if others else None
        copies = _Copies(
            self._version_of(serving_collection),
            serving_collection,
            None if staged is None else self._version_of(staged),
            staged,
        )
        self._copies = (copies, time.monotonic())
        return copies

    def _current_copies(self) -> _Copies:
        cached = self._copies
        if cached is not None and time.monotonic() - cached[1] < ENCODER_STATE_TTL_S:
            return cached[0]
        return self._read_copies()

    @property
    def _items(self) -> str:
        """The served items' collection, as this replica last read the alias."""
        return self._current_copies().serving_collection

    def _checked_copies(self, encoder_version: str | None, *, staged: bool = False) -> tuple[_Copies, bool]:
        """The copies and whether ``encoder_version`` names the staged one (only where ``staged`` reads may go
        there); read again from the server before refusing (this replica may not have seen a switch yet)."""
        check = reads_staged if staged else check_encoder
        try:
            copies = self._current_copies()
            return copies, bool(check(self._state_of(copies), encoder_version))
        except EncoderMismatchError:
            copies = self._read_copies()
            return copies, bool(check(self._state_of(copies), encoder_version))

    def _state_of(self, copies: _Copies, staged_items: int = 0) -> EncoderState:
        return EncoderState(copies.serving, copies.staged, staged_items)

    def encoders(self) -> EncoderState:
        copies = self._read_copies()
        if copies.staged_collection is None:
            return self._state_of(copies)
        with self._engine():
            staged_items = self._client.count(copies.staged_collection, exact=True).count
        return self._state_of(copies, staged_items)

    def list_items(self, encoder_version: str | None, offset: str, limit: int) -> tuple[list[Item], str]:
        validate_limit(limit, max_limit=1000)
        copies, staged = self._checked_copies(encoder_version, staged=True)
        collection = copies.staged_collection if staged and copies.staged_collection else copies.serving_collection
        start: models.ExtendedPointId | None = None
        if offset:
            try:
                start = str(uuid.UUID(offset))
            except ValueError as error:
                raise InvalidArgumentError(
                    f"offset {offset!r} is not one this store returned: start again from ''"
                ) from error
        with self._engine():
            records, next_offset = self._client.scroll(
                collection, limit=limit, offset=start, with_payload=True, with_vectors=False, consistency=CONSISTENT
            )
        return [listed_item(r.payload) for r in records], "" if next_offset is None else str(next_offset)

    def stage_encoder(self, version: str) -> EncoderState:
        copies = self._read_copies()
        if version == copies.serving:
            raise FailedPreconditionError(f"{encoder_label(version)} serves already: nothing to reindex")
        if copies.staged is not None and copies.staged != version:
            raise FailedPreconditionError(
                f"{encoder_label(copies.staged)} is staged: switch to it or drop it before staging another"
            )
        self._ensure_collection(
            self._collection_of(version), self._shard_number, self._replication_factor, indexes=self._index_fields()
        )
        return self.encoders()

    def switch_encoder(self, version: str) -> EncoderState:
        copies = self._read_copies()
        if copies.staged != version or copies.staged_collection is None:
            raise FailedPreconditionError(
                f"{encoder_label(version)} is not staged: run `recsys reindex --encoder {version or 'base'}` first"
            )
        with self._engine():
            serving_count = self._client.count(copies.serving_collection, exact=True).count
            staged_count = self._client.count(copies.staged_collection, exact=True).count
            ahead = self._client.count(
                copies.serving_collection, count_filter=_match(STAGED_BEHIND_FIELD, True), exact=True
            ).count
        check_caught_up(version, serving_count, staged_count, ahead)
        # One request: the server moves the alias atomically, so every reader sees one copy or the other.
        operations: list[models.AliasOperations] = [
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(
                    collection_name=copies.staged_collection, alias_name=self._serving_alias
                )
            )
        ]
        with self._engine():
            if any(a.alias_name == self._serving_alias for a in self._client.get_aliases().aliases):
                operations.insert(
                    0, models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self._serving_alias))
                )
            self._client.update_collection_aliases(change_aliases_operations=operations)
        log.info("switched the served items", encoder=version, collection=copies.staged_collection)
        return self.encoders()

    def drop_staged_encoder(self, version: str) -> EncoderState:
        copies = self._read_copies()
        if copies.staged != version or copies.staged_collection is None:
            raise FailedPreconditionError(f"{encoder_label(version)} is not staged: nothing to drop")
        with self._engine():
            self._client.delete_collection(copies.staged_collection)
        log.info("dropped the staged copy", encoder=version, collection=copies.staged_collection)
        return self.encoders()

    # -- setup ---------------------------------------------------------------------------------------------

    def _index_fields(self) -> dict[str, FieldType]:
        fields = dict(self._schema)
        fields[ITEM_ID_FIELD] = FieldType.KEYWORD
        fields[POPULARITY_FIELD] = FieldType.INTEGER
        fields[STAGED_BEHIND_FIELD] = FieldType.BOOL
        return fields

    def _ensure_collection(
        self,
        name: str,
        shard_number: int | None,
        replication_factor: int | None,
        indexes: Mapping[str, FieldType],
    ) -> None:
        if self._client.collection_exists(name):
            info = self._client.get_collection(name)
            vectors = info.config.params.vectors
            params = vectors.get("") if isinstance(vectors, dict) else vectors
            if params is None or params.size != self._dimension or params.distance != models.Distance.COSINE:
                raise DimensionMismatchError(
                    f"collection {name!r} has vectors {params}, not dimension {self._dimension} cosine: "
                    f"use another collection name or the embedding model it was made for"
                )
            existing = set(info.payload_schema)
            configured = info.config.params
            if (configured.write_consistency_factor or 1) < (configured.replication_factor or 1):
                log.warning(
                    "collection acknowledges writes before all its replicas have them, so a read on another "
                    "replica can miss an acknowledged event: raise its write_consistency_factor "
                    "(docs/reliability.md, 'Writes from many replicas')",
                    collection=name,
                    write_consistency_factor=configured.write_consistency_factor,
                    replication_factor=configured.replication_factor,
                )
        else:
            self._client.create_collection(
                name,
                vectors_config=models.VectorParams(size=self._dimension, distance=models.Distance.COSINE),
                shard_number=shard_number,
                replication_factor=replication_factor,
                # Every replica of a shard applies a write before it is acknowledged (see ORDERED).
                write_consistency_factor=replication_factor,
            )
            existing = set()
        with warnings.catch_warnings():
            # Local mode accepts payload indexes but warns that they have no effect there.
            warnings.filterwarnings("ignore", message="Payload indexes have no effect", category=UserWarning)
            for field, kind in indexes.items():
                if field not in existing:
                    self._client.create_payload_index(name, field, field_schema=_SCHEMA_TYPES[kind], wait=True)

    @contextmanager
    def _engine(self) -> Iterator[None]:
        """One engine call: serialised per client in local mode (not thread-safe); a server needs nothing."""
        with self._engine_lock if self._engine_lock is not None else nullcontext():
            self._check_open()
            yield

    def _check_open(self) -> None:
        if self._closed:
            raise UnavailableError("the vector store is closed")

    # -- properties ----------------------------------------------------------------------------------------

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def schema(self) -> PayloadSchema:
        return self._schema

    @property
    def index_ready(self) -> bool:
        """The server builds its indexes in the background and searches correctly meanwhile."""
        return True

    # -- items ---------------------------------------------------------------------------------------------

    def upsert_items(self, items: Sequence[Item], encoder_version: str | None = None, staged: bool = False) -> int:
        valid = validate_items(items, self._dimension, self._schema)
        if not valid:
            return 0
        ids = _item_pids(item.item_id for item in valid)
        # Read fresh: a write of one encoder's vectors must not land in the other's copy after a switch.
        copies = self._read_copies()
        if staged:
            check_staged(self._state_of(copies), encoder_version)
            written = self._upsert_staged(copies, valid)
        else:
            check_encoder(self._state_of(copies), encoder_version)
            with self._engine():
                existing = {
                    payload_item_id(r.payload): popularity_of(r.payload)
                    for r in self._client.retrieve(
                        copies.serving_collection, ids=ids, with_payload=[POPULARITY_FIELD, ITEM_ID_FIELD]
                    )
                }
            # While a staged copy exists, each served write marks the item as ahead of it (see switch).
            behind = {STAGED_BEHIND_FIELD: True} if copies.staged_collection is not None else {}
            points = [
                models.PointStruct(
                    id=pid,
                    vector=list(item.vector or ()),
                    payload=item_payload(item, existing.get(item.item_id, 0)) | behind,
                )
                for pid, item in zip(ids, valid, strict=True)
            ]
            with self._engine():
                self._client.upsert(copies.serving_collection, points=points, wait=True, ordering=ORDERED)
            written = [item.item_id for item in valid]
        # The popularity read above may be older than an event counted meanwhile (by this or another replica).
        self._log.refresh_popularity(written)
        return len(written)

    def _upsert_staged(self, copies: _Copies, items: Sequence[Item]) -> list[str]:
        """`staged_writes` into the staged copy; returns the ids written. Across replicas the read and the
        clearing are two requests: a served write between them stays ahead only until the reindex's next round
        finds it by content."""
        assert copies.staged_collection is not None
        with self._engine():
            served = {
                payload_item_id(r.payload): dict(r.payload or {})
                for r in self._client.retrieve(
                    copies.serving_collection, ids=_item_pids(i.item_id for i in items), with_payload=True
                )
            }
        kept, payloads, caught_up = staged_writes(items, served)
        points = [
            models.PointStruct(id=item_point_id(i.item_id), vector=list(i.vector or ()), payload=p)
            for i, p in zip(kept, payloads, strict=True)
        ]
        with self._engine():
            if points:
                self._client.upsert(copies.staged_collection, points=points, wait=True, ordering=ORDERED)
            if caught_up:
                self._client.set_payload(
                    copies.serving_collection,
                    payload={STAGED_BEHIND_FIELD: False},
                    points=models.PointIdsList(points=_item_pids(caught_up)),
                    wait=True,
                    ordering=ORDERED,
                )
        return [item.item_id for item in kept]

    def delete_items(self, ids: Sequence[str]) -> int:
        wanted = unique(validate_ids(ids, "item id"))
        if not wanted:
            return 0
        pids = _item_pids(wanted)
        copies = self._read_copies()
        with self._engine():
            found = len(self._client.retrieve(copies.serving_collection, ids=pids, with_payload=False))
            for collection in filter(None, (copies.serving_collection, copies.staged_collection)):
                self._client.delete(
                    collection, points_selector=models.PointIdsList(points=pids), wait=True, ordering=ORDERED
                )
        return found

    def get_items(
        self,
        ids: Sequence[str],
        with_vectors: bool = False,
        skip_missing: bool = False,
        encoder_version: str | None = None,
    ) -> list[Item]:
        wanted = validate_ids(ids, "item id")
        copies, _ = self._checked_copies(encoder_version)
        with self._engine():
            records = self._client.retrieve(
                copies.serving_collection,
                ids=_item_pids(unique(wanted)),
                with_payload=True,
                with_vectors=with_vectors,
            )
        by_id = {
            payload_item_id(r.payload): Item(
                item_id=payload_item_id(r.payload),
                vector=as_vector(r.vector) if with_vectors else None,
                payload=public_payload(r.payload),
            )
            for r in records
        }
        return in_requested_order(wanted, by_id, skip_missing)

    def count_items(self) -> int:
        with self._engine():
            return self._client.count(self._items, exact=True).count

    # -- queries -------------------------------------------------------------------------------------------

    def search(self, queries: Sequence[SearchQuery], encoder_version: str | None = None) -> list[list[ScoredItem]]:
        for index, query in enumerate(queries):
            validate_search_query(query, self._dimension, self._schema, index)
        if not queries:
            return []
        requests = [
            models.QueryRequest(
                query=list(map(float, q.vector)),
                filter=to_client_filter(
                    q.filter, (item_point_id(i) for i in q.exclude_ids), (item_point_id(i) for i in q.only_ids)
                ),
                limit=q.limit,
                offset=q.offset,
                with_payload=True,
                with_vector=q.with_vectors,
            )
            for q in queries
        ]
        copies, _ = self._checked_copies(encoder_version)
        with self._engine():
            responses = self._client.query_batch_points(copies.serving_collection, requests=requests)
        return [
            [scored_item(p, p.score, q.with_vectors) for p in response.points]
            for q, response in zip(queries, responses, strict=True)
        ]

    def recommend(
        self,
        positive_ids: Sequence[str],
        negative_ids: Sequence[str] = (),
        limit: int = 10,
        filter: Filter | None = None,
        exclude_ids: Sequence[str] = (),
    ) -> list[ScoredItem]:
        positives = unique(validate_ids(positive_ids, "positive item id"))
        negatives = unique(validate_ids(negative_ids, "negative item id"))
        if not positives and not negatives:
            raise InvalidArgumentError("recommend needs at least one positive or negative example")
        validate_limit(limit)
        validate_filter(filter, self._schema)
        excluded = validate_ids(exclude_ids, "excluded item id")
        examples = unique([*positives, *negatives])
        with self._engine():
            # The examples' vectors are fetched first (unknown ids -> NotFoundError) and passed as vectors, so
            # both backends behave alike; examples are excluded explicitly.
            vectors = {
                payload_item_id(r.payload): as_vector(r.vector)
                for r in self._client.retrieve(
                    self._items, ids=_item_pids(examples), with_payload=[ITEM_ID_FIELD], with_vectors=True
                )
            }
            missing = [i for i in examples if vectors.get(i) is None]
            if missing:
                raise not_found("example item", missing)
            positive_vectors: list[models.VectorInput] = [list(vectors[i] or ()) for i in positives]
            negative_vectors: list[models.VectorInput] = [list(vectors[i] or ()) for i in negatives]
            response = self._client.query_points(
                self._items,
                query=models.RecommendQuery(
                    recommend=models.RecommendInput(
                        positive=positive_vectors,
                        negative=negative_vectors,
                        strategy=models.RecommendStrategy.BEST_SCORE,
                    )
                ),
                query_filter=to_client_filter(filter, (item_point_id(i) for i in unique([*examples, *excluded]))),
                limit=limit,
                with_payload=True,
                with_vectors=False,
            )
        return [scored_item(p, p.score, False) for p in response.points]

    def popular(
        self,
        limit: int = 10,
        filter: Filter | None = None,
        exclude_ids: Sequence[str] = (),
        offset: int = 0,
    ) -> list[ScoredItem]:
        validate_limit(limit, offset)
        validate_filter(filter, self._schema)
        excluded = validate_ids(exclude_ids, "excluded item id")
        with self._engine():
            response = self._client.query_points(
                self._items,
                query=models.OrderByQuery(
                    order_by=models.OrderBy(key=POPULARITY_FIELD, direction=models.Direction.DESC)
                ),
                query_filter=to_client_filter(filter, (item_point_id(i) for i in excluded)),
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=False,
            )
        return [
            scored_item(p, float(p.order_value if p.order_value is not None else popularity_of(p.payload)), False)
            for p in response.points
        ]

    # -- users, events, impressions (services/retriever/eventlog.py) ------------------------------------------

    def append_user_events(self, user_id: str, events: Sequence[UserEvent]) -> UserProfile:
        return self._log.append(user_id, events)

    def unknown_recommendations(self, events: Sequence[UserEvent]) -> list[str]:
        return self._log.unknown_recommendations(events)

    def get_user(self, user_id: str) -> UserProfile:
        return self._log.get_user(user_id)

    def delete_user(self, user_id: str) -> None:
        self._log.delete_user(user_id)

    def count_users(self) -> int:
        return self._log.count_users()

    def record_impressions(self, impressions: Sequence[Impression]) -> None:
        self._log.record_impressions(impressions)

    def get_impressions(self, recommendation_id: str) -> list[Impression]:
        return self._log.get_impressions(recommendation_id)

    def list_impressions(self, experiment: str, limit: int, page_token: str) -> tuple[list[Impression], str]:
        return self._log.list_impressions(experiment, limit, page_token)

    # -- info, lifecycle -----------------------------------------------------------------------------------

    def info(self) -> StoreInfo:
        with self._engine():
            items = self._client.get_collection(self._items)
            item_count = self._client.count(self._items, exact=True).count
        users = self._log.count_users()
        # Local mode reports no payload schema (its indexes have no effect); show what was created.
        indexes = tuple(sorted(items.payload_schema)) if items.payload_schema else tuple(sorted(self._index_fields()))
        return StoreInfo(
            backend=self.backend + (" (local mode)" if self._local else ""),
            items=item_count,
            users=users,
            indexed_vectors=items.indexed_vectors_count or 0,
            dimension=self._dimension,
            distance="cosine",
            payload_indexes=indexes,
            index_ready=self.index_ready,
        )

    def close(self) -> None:
        with self._engine_lock if self._engine_lock is not None else nullcontext():
            if self._closed:
                return
            self._closed = True
            if self._owns_client:
                self._client.close()


def _match_any(field: str, values: Sequence[str]) -> models.Filter:
    return models.Filter(must=[models.FieldCondition(key=field, match=models.MatchAny(any=list(values)))])


class _ClientLog:
    """The event log's engine calls (`eventlog.LogEngine`) on the store's collections, one client call each."""

    def __init__(self, store: ClientVectorStore) -> None:
        self._store = store
        self._client = store.client

    def _scroll_all(self, collection: str, filter: models.Filter) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset: Any = None
        while True:
            with self._store._engine():
                records, offset = self._client.scroll(
                    collection,
                    scroll_filter=filter,
                    limit=256,
                    offset=offset,
                    with_payload=True,
                    with_vectors=False,
                    consistency=CONSISTENT,
                )
            out.extend(dict(r.payload or {}) for r in records)
            if offset is None:
                return out

    def _facet(self, collection: str, field: str, filter: models.Filter, limit: int) -> dict[str, int]:
        with self._store._engine():
            response = self._client.facet(
                collection, key=field, facet_filter=filter, limit=max(limit, 1), exact=True, consistency=CONSISTENT
            )
        return {str(hit.value): int(hit.count) for hit in response.hits}

    def _count(self, collection: str, filter: models.Filter) -> int:
        # A count takes no read consistency: it sees every acknowledged write because each write is applied
        # on all of the shard's replicas before it is acknowledged (write_consistency_factor, see above).
        with self._store._engine():
            return self._client.count(collection, count_filter=filter, exact=True).count

    def _newest(self, collection: str, user_id: str, limit: int) -> list[dict[str, Any]]:
        with self._store._engine():
            records, _ = self._client.scroll(
                collection,
                scroll_filter=_match(USER_ID_FIELD, user_id),
                limit=limit,
                order_by=models.OrderBy(key=eventlog.TIMESTAMP_FIELD, direction=models.Direction.DESC),
                with_payload=True,
                with_vectors=False,
                consistency=CONSISTENT,
            )
        return [dict(r.payload or {}) for r in records]

    def item_vectors(self, item_ids: Sequence[str]) -> tuple[str, dict[str, tuple[float, ...] | None]]:
        copies = self._store._current_copies()
        with self._store._engine():
            records = self._client.retrieve(
                copies.serving_collection,
                ids=_item_pids(item_ids),
                with_payload=[ITEM_ID_FIELD],
                with_vectors=True,
                consistency=CONSISTENT,
            )
        return copies.serving, {payload_item_id(r.payload): as_vector(r.vector) for r in records}

    def serving_encoder(self) -> str:
        return self._store._current_copies().serving

    def set_popularity(self, counts: Mapping[str, int]) -> None:
        by_count: dict[int, list[str]] = {}
        for item_id, count in counts.items():
            by_count.setdefault(count, []).append(item_id)
        # By filter: an item deleted meanwhile is skipped, not an error.
        operations: list[models.UpdateOperation] = [
            models.SetPayloadOperation(
                set_payload=models.SetPayload(
                    payload={POPULARITY_FIELD: count},
                    filter=models.Filter(must=[models.HasIdCondition(has_id=_item_pids(ids))]),
                )
            )
            for count, ids in by_count.items()
        ]
        if operations:
            copies = self._store._read_copies()  # both copies keep the count
            with self._store._engine():
                for collection in filter(None, (copies.serving_collection, copies.staged_collection)):
                    self._client.batch_update_points(
                        collection, update_operations=operations, wait=True, ordering=ORDERED
                    )

    def item_ids(self, offset: Any, limit: int) -> tuple[list[str], Any]:
        with self._store._engine():
            records, next_offset = self._client.scroll(
                self._store._items,
                limit=limit,
                offset=offset,
                with_payload=[ITEM_ID_FIELD],
                with_vectors=False,
                consistency=CONSISTENT,
            )
        return [payload_item_id(r.payload) for r in records], next_offset

    def insert_events(self, points: Sequence[tuple[uuid.UUID, dict[str, Any]]]) -> None:
        structs = [models.PointStruct(id=str(pid), vector={}, payload=payload) for pid, payload in points]
        with self._store._engine():
            self._client.upsert(
                self._store._events,
                points=structs,
                update_mode=models.UpdateMode.INSERT_ONLY,
                wait=True,
                ordering=ORDERED,
            )

    def count_events(self, user_id: str) -> int:
        return self._count(self._store._events, _match(USER_ID_FIELD, user_id))

    def newest_events(self, user_id: str, limit: int) -> list[dict[str, Any]]:
        return self._newest(self._store._events, user_id, limit)

    def event_counts(self, item_ids: Sequence[str]) -> dict[str, int]:
        field = eventlog.ITEM_FIELD
        return self._facet(self._store._events, field, _match_any(field, item_ids), len(item_ids))

    def events_of_recommendations(self, recommendation_ids: Sequence[str]) -> list[dict[str, Any]]:
        return self._scroll_all(self._store._events, _match_any(feedback.RECOMMENDATION_FIELD, recommendation_ids))

    def events_of_user(self, user_id: str) -> list[tuple[uuid.UUID, str]]:
        out: list[tuple[uuid.UUID, str]] = []
        offset: Any = None
        while True:
            with self._store._engine():
                records, offset = self._client.scroll(
                    self._store._events,
                    scroll_filter=_match(USER_ID_FIELD, user_id),
                    limit=1024,
                    offset=offset,
                    with_payload=[eventlog.ITEM_FIELD],
                    with_vectors=False,
                    consistency=CONSISTENT,
                )
            out.extend((uuid.UUID(str(r.id)), str((r.payload or {})[eventlog.ITEM_FIELD])) for r in records)
            if offset is None:
                return out

    def delete_events(self, point_ids: Sequence[uuid.UUID]) -> None:
        with self._store._engine():
            self._client.delete(
                self._store._events,
                points_selector=models.PointIdsList(points=_pids(point_ids)),
                wait=True,
                ordering=ORDERED,
            )

    def read_user(self, user_id: str) -> tuple[dict[str, Any], tuple[float, ...] | None] | None:
        with self._store._engine():
            records = self._client.retrieve(
                self._store._users,
                ids=[str(user_point_id(user_id))],
                with_payload=True,
                with_vectors=True,
                consistency=CONSISTENT,
            )
        return (dict(records[0].payload or {}), as_vector(records[0].vector)) if records else None

    def write_user(
        self, user_id: str, version: eventlog.Version, payload: dict[str, Any], vector: tuple[float, ...] | None
    ) -> None:
        older = models.Filter(
            should=[
                models.IsEmptyCondition(is_empty=models.PayloadField(key=eventlog.IMPRESSIONS_FIELD)),
                models.FieldCondition(key=eventlog.INCARNATION_FIELD, range=models.Range(lt=version.incarnation)),
                models.Filter(
                    must=[
                        models.FieldCondition(
                            key=eventlog.INCARNATION_FIELD, match=models.MatchValue(value=version.incarnation)
                        ),
                        models.FieldCondition(key=eventlog.EVENTS_FIELD, range=models.Range(lte=version.events)),
                        models.FieldCondition(
                            key=eventlog.IMPRESSIONS_FIELD, range=models.Range(lte=version.impressions)
                        ),
                    ]
                ),
            ]
        )
        point = models.PointStruct(
            id=str(user_point_id(user_id)), vector=list(vector) if vector is not None else {}, payload=payload
        )
        with self._store._engine():
            self._client.upsert(self._store._users, points=[point], update_filter=older, wait=True, ordering=ORDERED)

    def legacy_users(self, limit: int) -> list[dict[str, Any]]:
        unversioned = models.Filter(
            must=[models.IsEmptyCondition(is_empty=models.PayloadField(key=eventlog.IMPRESSIONS_FIELD))],
            must_not=[models.FieldCondition(key=eventlog.STATE_FIELD, match=models.MatchValue(value=eventlog.DELETED))],
        )
        with self._store._engine():
            records, _ = self._client.scroll(
                self._store._users,
                scroll_filter=unversioned,
                limit=limit,
                with_payload=True,
                with_vectors=False,
                consistency=CONSISTENT,
            )
        return [dict(r.payload or {}) for r in records]

    def count_users(self) -> int:
        deleted = models.FieldCondition(key=eventlog.STATE_FIELD, match=models.MatchValue(value=eventlog.DELETED))
        return self._count(self._store._users, models.Filter(must_not=[deleted]))

    def upsert_impressions(self, points: Sequence[tuple[uuid.UUID, dict[str, Any]]]) -> None:
        structs = [models.PointStruct(id=str(pid), vector={}, payload=payload) for pid, payload in points]
        with self._store._engine():
            self._client.upsert(self._store._feedback, points=structs, wait=True, ordering=ORDERED)

    def impressions_of(self, recommendation_id: str) -> list[dict[str, Any]]:
        return self._scroll_all(self._store._feedback, _match(feedback.RECOMMENDATION_FIELD, recommendation_id))

    def list_impressions(
        self, experiment: str, limit: int, start: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        with self._store._engine():
            records, next_offset = self._client.scroll(
                self._store._feedback,
                scroll_filter=_match(feedback.EXPERIMENT_FIELD, experiment) if experiment else None,
                limit=limit,
                offset=start,
                with_payload=True,
                with_vectors=False,
                consistency=CONSISTENT,
            )
        return [dict(r.payload or {}) for r in records], None if next_offset is None else str(next_offset)

    def count_impressions(self, user_id: str) -> int:
        return self._count(self._store._feedback, _match(USER_ID_FIELD, user_id))

    def newest_impressions(self, user_id: str, limit: int) -> list[dict[str, Any]]:
        return self._newest(self._store._feedback, user_id, limit)

    def recorded_recommendations(self, recommendation_ids: Sequence[str]) -> set[str]:
        field = feedback.RECOMMENDATION_FIELD
        return set(
            self._facet(self._store._feedback, field, _match_any(field, recommendation_ids), len(recommendation_ids))
        )

    def delete_impressions_of_user(self, user_id: str) -> int:
        of_user = _match(USER_ID_FIELD, user_id)
        found = self._count(self._store._feedback, of_user)
        if found:
            with self._store._engine():
                self._client.delete(
                    self._store._feedback,
                    points_selector=models.FilterSelector(filter=of_user),
                    wait=True,
                    ordering=ORDERED,
                )
        return found
