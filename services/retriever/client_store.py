"""The server backend: a Qdrant server or cluster through qdrant-client (three collections, `items`, `users`
and `feedback`, the impressions as vectorless points). The same code runs against the client's local mode
(`:memory:` or a folder), which is how the tests exercise it; local mode is a pure-Python engine for small
data only. Named catalogs use the same three collections with the catalog's prefix (`with_prefix`).

Index building is the server's own business (its optimizers run in the background), so `index_ready` is True.
Reads and writes are serialised per store only where needed: `append_user_events` and item upserts read,
modify and write popularity under `_write_lock`; local mode (not thread-safe) also serialises reads. Two
service replicas writing the same items' popularity at once can still lose an increment: Qdrant has no
server-side increment.
"""

from __future__ import annotations

import threading
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient, models

from services.common.errors import InvalidArgumentError, UnavailableError
from services.retriever import feedback, profiles
from services.retriever.store import (
    CATEGORIES_FIELD,
    DEFAULT_SCHEMA,
    EVENTS_FIELD,
    ITEM_ID_FIELD,
    POPULARITY_FIELD,
    USER_ID_FIELD,
    DimensionMismatchError,
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
    events_from_payload,
    events_to_payload,
    in_requested_order,
    item_payload,
    item_point_id,
    merge_history,
    not_found,
    payload_item_id,
    popularity_increments,
    popularity_of,
    public_payload,
    scored_item,
    unique,
    user_point_id,
    validate_events,
    validate_filter,
    validate_id,
    validate_ids,
    validate_items,
    validate_limit,
    validate_search_query,
    validate_store_settings,
)

_SCHEMA_TYPES: Mapping[FieldType, models.PayloadSchemaType] = {
    FieldType.KEYWORD: models.PayloadSchemaType.KEYWORD,
    FieldType.FLOAT: models.PayloadSchemaType.FLOAT,
    FieldType.INTEGER: models.PayloadSchemaType.INTEGER,
    FieldType.BOOL: models.PayloadSchemaType.BOOL,
}


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


def _match(field: str, value: str) -> models.Filter:
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
        self._items = items_collection
        self._users = users_collection
        self._feedback = feedback_collection
        self._shard_number = shard_number
        self._replication_factor = replication_factor
        self._max_history = max_history
        self._half_life = half_life_events
        options = client.init_options
        self._local = options.get("location") == ":memory:" or options.get("path") is not None
        self._write_lock = threading.RLock()
        self._closed = False
        self._ensure_collection(self._items, shard_number, replication_factor, indexes=self._index_fields())
        self._ensure_collection(self._users, shard_number, replication_factor, indexes={})
        self._ensure_collection(
            self._feedback,
            shard_number,
            replication_factor,
            indexes=dict.fromkeys(feedback.INDEXED_FIELDS, FieldType.KEYWORD),
        )

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
        """A store with the same settings on the same client, on collections `<prefix>items`, `<prefix>users`
        and `<prefix>feedback` (created when missing); it leaves the client to this store."""
        return ClientVectorStore(
            self._client,
            dimension=self._dimension,
            items_collection=f"{prefix}items",
            users_collection=f"{prefix}users",
            feedback_collection=f"{prefix}feedback",
            schema=self._schema,
            shard_number=self._shard_number,
            replication_factor=self._replication_factor,
            max_history=self._max_history,
            half_life_events=self._half_life,
        )

    # -- setup ---------------------------------------------------------------------------------------------

    def _index_fields(self) -> dict[str, FieldType]:
        fields = dict(self._schema)
        fields[ITEM_ID_FIELD] = FieldType.KEYWORD
        fields[POPULARITY_FIELD] = FieldType.INTEGER
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
        else:
            self._client.create_collection(
                name,
                vectors_config=models.VectorParams(size=self._dimension, distance=models.Distance.COSINE),
                shard_number=shard_number,
                replication_factor=replication_factor,
            )
            existing = set()
        with warnings.catch_warnings():
            # Local mode accepts payload indexes but warns that they have no effect there.
            warnings.filterwarnings("ignore", message="Payload indexes have no effect", category=UserWarning)
            for field, kind in indexes.items():
                if field not in existing:
                    self._client.create_payload_index(name, field, field_schema=_SCHEMA_TYPES[kind], wait=True)

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Local mode is a plain Python engine: serialise its reads with the writes. A server needs none."""
        if self._local:
            with self._write_lock:
                self._check_open()
                yield
        else:
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

    def upsert_items(self, items: Sequence[Item]) -> int:
        valid = validate_items(items, self._dimension, self._schema)
        if not valid:
            return 0
        with self._write_lock:
            self._check_open()
            ids = _item_pids(item.item_id for item in valid)
            existing = {
                payload_item_id(r.payload): popularity_of(r.payload)
                for r in self._client.retrieve(self._items, ids=ids, with_payload=[POPULARITY_FIELD, ITEM_ID_FIELD])
            }
            points = [
                models.PointStruct(
                    id=pid,
                    vector=list(item.vector or ()),
                    payload=item_payload(item, existing.get(item.item_id, 0)),
                )
                for pid, item in zip(ids, valid, strict=True)
            ]
            self._client.upsert(self._items, points=points, wait=True)
        return len(valid)

    def delete_items(self, ids: Sequence[str]) -> int:
        wanted = unique(validate_ids(ids, "item id"))
        if not wanted:
            return 0
        with self._write_lock:
            self._check_open()
            pids = _item_pids(wanted)
            found = len(self._client.retrieve(self._items, ids=pids, with_payload=False))
            self._client.delete(self._items, points_selector=models.PointIdsList(points=pids), wait=True)
        return found

    def get_items(self, ids: Sequence[str], with_vectors: bool = False, skip_missing: bool = False) -> list[Item]:
        wanted = validate_ids(ids, "item id")
        with self._reading():
            records = self._client.retrieve(
                self._items, ids=_item_pids(unique(wanted)), with_payload=True, with_vectors=with_vectors
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
        with self._reading():
            return self._client.count(self._items, exact=True).count

    # -- queries -------------------------------------------------------------------------------------------

    def search(self, queries: Sequence[SearchQuery]) -> list[list[ScoredItem]]:
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
        with self._reading():
            responses = self._client.query_batch_points(self._items, requests=requests)
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
        with self._reading():
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
        with self._reading():
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

    # -- users ---------------------------------------------------------------------------------------------

    def append_user_events(self, user_id: str, events: Sequence[UserEvent]) -> UserProfile:
        validate_id(user_id, "user id")
        new_events = validate_events(events)
        with self._write_lock:
            self._check_open()
            event_items = unique([e.item_id for e in new_events])
            records = {
                payload_item_id(r.payload): r
                for r in self._client.retrieve(
                    self._items, ids=_item_pids(event_items), with_payload=True, with_vectors=True
                )
            }
            missing = [i for i in event_items if i not in records]
            if missing:
                raise not_found("item", missing)
            user_pid = str(user_point_id(user_id))
            old = self._client.retrieve(self._users, ids=[user_pid], with_payload=True)
            old_payload = (old[0].payload or {}) if old else {}
            old_events = events_from_payload(old_payload.get(EVENTS_FIELD))
            shown = feedback.forget_shown(
                feedback.shown_from_payload(old_payload.get(feedback.SHOWN_FIELD)), event_items
            )
            history = merge_history(old_events, new_events, self._max_history)
            vectors = {i: as_vector(r.vector) for i, r in records.items()}
            others = unique([e.item_id for e in history if e.item_id not in vectors])
            if others:
                for r in self._client.retrieve(
                    self._items, ids=_item_pids(others), with_payload=[ITEM_ID_FIELD], with_vectors=True
                ):
                    vectors[payload_item_id(r.payload)] = as_vector(r.vector)
            vector = profiles.history_profile(history, vectors, self._half_life)
            self._client.upsert(
                self._users,
                points=[
                    models.PointStruct(
                        id=user_pid,
                        vector=list(vector) if vector is not None else {},
                        payload={
                            USER_ID_FIELD: user_id,
                            EVENTS_FIELD: events_to_payload(history),
                            feedback.SHOWN_FIELD: feedback.shown_to_payload(shown),
                        },
                    )
                ],
                wait=True,
            )
            operations: list[models.UpdateOperation] = [
                models.SetPayloadOperation(
                    set_payload=models.SetPayload(
                        payload={POPULARITY_FIELD: popularity_of(records[item_id].payload) + increment},
                        points=_item_pids([item_id]),
                    )
                )
                for item_id, increment in popularity_increments(new_events).items()
            ]
            self._client.batch_update_points(self._items, update_operations=operations, wait=True)
            self._attribute(new_events)
        return UserProfile(user_id=user_id, vector=vector, events=history, shown_counts=shown)

    def _attribute(self, events: Sequence[UserEvent]) -> None:
        """Marks shown items engaged (and converted) on the impressions the events name."""
        for rid in feedback.recommendation_ids(events):
            for impression in feedback.attribute(self._impressions_of(rid), events):
                pid = str(feedback.impression_point_id(impression.recommendation_id, impression.page))
                self._client.set_payload(
                    self._feedback, payload=feedback.to_payload(impression), points=[pid], wait=True
                )

    def get_user(self, user_id: str) -> UserProfile:
        validate_id(user_id, "user id")
        with self._reading():
            records = self._client.retrieve(
                self._users, ids=[str(user_point_id(user_id))], with_payload=True, with_vectors=True
            )
        if not records:
            raise not_found("user", [user_id])
        payload = records[0].payload or {}
        return UserProfile(
            user_id=user_id,
            vector=as_vector(records[0].vector),
            events=events_from_payload(payload.get(EVENTS_FIELD)),
            shown_counts=feedback.shown_from_payload(payload.get(feedback.SHOWN_FIELD)),
        )

    def delete_user(self, user_id: str) -> None:
        validate_id(user_id, "user id")
        with self._write_lock:
            self._check_open()
            pid = str(user_point_id(user_id))
            records = self._client.retrieve(self._users, ids=[pid], with_payload=True)
            # Privacy: the user's impressions go too (they also go when, oddly, the profile is already gone).
            of_user = _match(USER_ID_FIELD, user_id)
            impressions = self._client.count(self._feedback, count_filter=of_user, exact=True).count
            if impressions:
                self._client.delete(self._feedback, points_selector=models.FilterSelector(filter=of_user), wait=True)
            if not records:
                if impressions:
                    return
                raise not_found("user", [user_id])
            self._client.delete(self._users, points_selector=models.PointIdsList(points=[pid]), wait=True)
            # The user's kept events no longer count towards popularity either.
            counts = popularity_increments(events_from_payload((records[0].payload or {}).get(EVENTS_FIELD)))
            items = self._client.retrieve(self._items, ids=_item_pids(list(counts)), with_payload=True)
            operations: list[models.UpdateOperation] = [
                models.SetPayloadOperation(
                    set_payload=models.SetPayload(
                        payload={
                            POPULARITY_FIELD: max(0, popularity_of(r.payload) - counts[payload_item_id(r.payload)])
                        },
                        points=[r.id],
                    )
                )
                for r in items
                if payload_item_id(r.payload) in counts
            ]
            if operations:
                self._client.batch_update_points(self._items, update_operations=operations, wait=True)

    def count_users(self) -> int:
        with self._reading():
            return self._client.count(self._users, exact=True).count

    # -- feedback log --------------------------------------------------------------------------------------

    def record_impression(self, impression: Impression) -> None:
        new = feedback.validate_impression(impression)
        pid = str(feedback.impression_point_id(new.recommendation_id, new.page))
        with self._write_lock:
            self._check_open()
            found = self._client.retrieve(self._feedback, ids=[pid], with_payload=True)
            old = feedback.from_payload(found[0].payload) if found else None
            stored, counted = feedback.replacement(old, new)
            self._client.upsert(
                self._feedback,
                points=[models.PointStruct(id=pid, vector={}, payload=feedback.to_payload(stored))],
                wait=True,
            )
            if stored.user_id and counted:
                self._count_shown(stored.user_id, counted)

    def _count_shown(self, user_id: str, items: Sequence[str]) -> None:
        user_pid = str(user_point_id(user_id))
        found = self._client.retrieve(self._users, ids=[user_pid], with_payload=True)
        if found:
            shown = feedback.shown_from_payload((found[0].payload or {}).get(feedback.SHOWN_FIELD))
            update = {feedback.SHOWN_FIELD: feedback.shown_to_payload(feedback.bump_shown(shown, items))}
            self._client.set_payload(self._users, payload=update, points=[user_pid], wait=True)
        else:  # a user seen only through impressions so far: a profile with no events and no vector
            payload = {
                USER_ID_FIELD: user_id,
                EVENTS_FIELD: [],
                feedback.SHOWN_FIELD: feedback.shown_to_payload(feedback.bump_shown({}, items)),
            }
            self._client.upsert(
                self._users, points=[models.PointStruct(id=user_pid, vector={}, payload=payload)], wait=True
            )

    def _impressions_of(self, recommendation_id: str) -> list[Impression]:
        out: list[Impression] = []
        offset: Any = None
        while True:
            records, offset = self._client.scroll(
                self._feedback,
                scroll_filter=_match(feedback.RECOMMENDATION_FIELD, recommendation_id),
                limit=256,
                offset=offset,
                with_payload=True,
                with_vectors=False,
            )
            out.extend(feedback.from_payload(r.payload) for r in records)
            if offset is None:
                return feedback.by_page(out)

    def get_impressions(self, recommendation_id: str) -> list[Impression]:
        feedback.validate_recommendation_id(recommendation_id)
        with self._reading():
            found = self._impressions_of(recommendation_id)
        if not found:
            raise not_found("recommendation", [recommendation_id])
        return found

    def list_impressions(self, experiment: str, limit: int, page_token: str) -> tuple[list[Impression], str]:
        start = feedback.validate_list(experiment, limit, page_token)
        with self._reading():
            records, next_offset = self._client.scroll(
                self._feedback,
                scroll_filter=_match(feedback.EXPERIMENT_FIELD, experiment) if experiment else None,
                limit=limit,
                offset=start,
                with_payload=True,
                with_vectors=False,
            )
        return [feedback.from_payload(r.payload) for r in records], "" if next_offset is None else str(next_offset)

    # -- info, lifecycle -----------------------------------------------------------------------------------

    def info(self) -> StoreInfo:
        with self._reading():
            items = self._client.get_collection(self._items)
            item_count = self._client.count(self._items, exact=True).count
            users = self._client.count(self._users, exact=True).count
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
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            if self._owns_client:
                self._client.close()
