"""The default backend: Qdrant's engine in process (qdrant-edge-py), three shards under one folder.

Layout of `data_dir`: `users/`, `feedback/` (impressions, vectorless points) and `items` (the live shards);
`items` is a symlink to `items.<generation>/`, and an index build writes the next generation beside it and
moves the link when done. Shards are created on first start and loaded on restart (a folder made before the
feedback log existed gains `feedback/` on its next start).

Durability: the WAL is on, and `update` writes it through a shared memory map before it returns (measured:
no fsync or msync per update; 2,000 updates followed by SIGKILL all come back on load), so an acknowledged
write survives a kill -9 of the process. A crash of the machine loses what the kernel has not written out;
`sync_writes=True` closes that gap by flushing the shards before a write is acknowledged, one flush shared by
every writer waiting at that moment (group commit; cost in docs/reliability.md).

Locking: `_write_lock` serialises every write (and makes `append_user_events` atomic); searches and reads
share `_rw`, which only an index swap takes exclusively. The engine is safe for concurrent reads and writes.
The items shard never builds its HNSW index by itself (see `indexing.py`): `start_index_build()` does it in a
child process on a copy and swaps the result in.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from qdrant_edge import (
    CountRequest,
    Direction,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeShard,
    EdgeVectorParams,
    FieldCondition,
    HasIdCondition,
    HnswIndexConfig,
    MatchAny,
    MatchValue,
    OrderBy,
    PayloadSchemaType,
    Point,
    Query,
    QueryBatchRequest,
    QueryRequest,
    RangeFloat,
    RecommendQuery,
    ScrollRequest,
    UpdateOperation,
)
from qdrant_edge import Filter as EdgeFilter

from services.common.errors import InvalidArgumentError, UnavailableError
from services.retriever import feedback, profiles
from services.retriever.indexing import NEVER_INDEX_KB, BackgroundIndexer
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
    ReadWriteLock,
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

logger = logging.getLogger(__name__)

_SCHEMA_TYPES: Mapping[FieldType, Any] = {
    FieldType.KEYWORD: PayloadSchemaType.Keyword,
    FieldType.FLOAT: PayloadSchemaType.Float,
    FieldType.INTEGER: PayloadSchemaType.Integer,
    FieldType.BOOL: PayloadSchemaType.Bool,
}


def to_edge_filter(
    filter: Filter | None, exclude: Sequence[uuid.UUID] = (), only: Sequence[uuid.UUID] = ()
) -> EdgeFilter | None:
    """Our (validated) filter as the engine's: every condition and the allowed ids (when any) in `must`,
    excluded ids in `must_not`."""
    must: list[Any] = [HasIdCondition(set(only))] if only else []
    if filter is not None:
        if filter.categories_any:
            must.append(FieldCondition(key=CATEGORIES_FIELD, match=MatchAny(list(filter.categories_any))))
        for name, values in filter.keywords.items():
            must.append(FieldCondition(key=name, match=MatchAny(list(values))))
        for name, (gte, lte) in filter.ranges.items():
            must.append(
                FieldCondition(
                    key=name,
                    range=RangeFloat(gte=None if gte is None else float(gte), lte=None if lte is None else float(lte)),
                )
            )
        for name, flag in filter.flags.items():
            # qdrant-edge 0.9.0 turns a Python bool into the integer 0/1 here, which matches no bool value;
            # numpy's bool reaches the engine as a bool.
            must.append(FieldCondition(key=name, match=MatchValue(cast(bool, np.bool_(flag)))))
    must_not: list[Any] = [HasIdCondition(set(exclude))] if exclude else []
    if not must and not must_not:
        return None
    return EdgeFilter(must=must or None, must_not=must_not or None)


class GroupCommit:
    """`sync()` returns once every write that finished before the call is on disk. Writers that arrive while
    a flush runs wait for the next one, which covers all of them: one flush per group, not per write."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._cond = threading.Condition()
        self._tickets = 0  # handed out in call order
        self._durable = 0  # every ticket up to this one is on disk
        self._flushing = False
        self.flushes = 0

    def sync(self) -> None:
        with self._cond:
            self._tickets += 1
            ticket = self._tickets
            while self._durable < ticket:
                if self._flushing:
                    self._cond.wait()
                    continue
                # Lead a flush that covers every ticket handed out so far.
                self._flushing = True
                covered = self._tickets
                self._cond.release()
                try:
                    self._flush()
                finally:
                    self._cond.acquire()
                    self._flushing = False
                    self._cond.notify_all()
                self._durable = max(self._durable, covered)
                self.flushes += 1


class EdgeVectorStore:
    """`VectorStore` on qdrant-edge shards under `data_dir`."""

    backend = "qdrant-edge"

    def __init__(
        self,
        data_dir: Path | str,
        dimension: int,
        schema: PayloadSchema = DEFAULT_SCHEMA,
        *,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 200,
        full_scan_threshold_kb: int = 10_000,
        max_history: int = 200,
        half_life_events: float = 50.0,
        index_build_timeout_s: float = 3600.0,
        sync_writes: bool = False,
        rebuild_unindexed: int | None = None,
    ) -> None:
        validate_store_settings(dimension, max_history, half_life_events)
        if schema.get(POPULARITY_FIELD, FieldType.INTEGER) is not FieldType.INTEGER:
            raise InvalidArgumentError(f"schema field {POPULARITY_FIELD!r} is kept by the store and must be integer")
        self._dimension = dimension
        self._schema: PayloadSchema = dict(schema)
        self._max_history = max_history
        self._half_life = half_life_events
        self._hnsw = HnswIndexConfig(
            m=hnsw_m, ef_construct=hnsw_ef_construct, full_scan_threshold=full_scan_threshold_kb
        )
        self._dir = Path(data_dir)
        self._items_link = self._dir / "items"
        self._users_dir = self._dir / "users"
        self._feedback_dir = self._dir / "feedback"
        self._write_lock = threading.RLock()
        self._rw = ReadWriteLock()
        self._closed = False
        # Item ids written since the index build copied the shard (None when no build is in flight).
        self._dirty: set[str] | None = None
        self._dir.mkdir(parents=True, exist_ok=True)
        self._items_dir = self._current_items_dir()
        self._items = self._open(self._items_dir, self._index_fields())
        try:
            self._users = self._open(self._users_dir, {})
            try:
                self._feedback = self._open(
                    self._feedback_dir, dict.fromkeys(feedback.INDEXED_FIELDS, FieldType.KEYWORD)
                )
            except Exception:
                self._users.close()
                raise
        except Exception:
            self._items.close()
            raise
        self._index_built = self._items.info().indexed_vectors_count > 0
        # rebuild_unindexed: after a build, build again when this many items written during it are unindexed.
        self._indexer = BackgroundIndexer(self, timeout_s=index_build_timeout_s, rebuild_at=rebuild_unindexed)
        self._commit = GroupCommit(self._flush_shards) if sync_writes else None

    # -- setup ---------------------------------------------------------------------------------------------

    def _config(self) -> EdgeConfig:
        return EdgeConfig(
            vectors=EdgeVectorParams(size=self._dimension, distance=Distance.Cosine),
            hnsw_config=self._hnsw,
            optimizers=EdgeOptimizersConfig(indexing_threshold=NEVER_INDEX_KB),
            wal_enabled=True,
        )

    def _current_items_dir(self) -> Path:
        """The folder of the live items shard: `items` is a symlink to `items.<generation>`; an index build
        writes the next generation and moves the link. Folders of other generations are leftovers of a build
        cut short (or of the shard it replaced) and are removed."""
        link = self._items_link
        if link.is_symlink():
            current = self._dir / os.readlink(link)
            if not current.is_dir():
                raise UnavailableError(f"{link} points to {current}, which does not exist")
        elif link.is_dir():  # a plain folder (copied in by hand): make it generation 1
            current = self._dir / "items.1"
            link.rename(current)
            self._point_items_link(current)
        else:
            current = self._dir / "items.1"
            current.mkdir(exist_ok=True)
            self._point_items_link(current)
        for path in self._dir.glob("items.*"):
            if path.is_symlink():
                path.unlink()
            elif path.is_dir() and path.name != current.name:
                logger.info("removing stale shard folder %s", path)
                shutil.rmtree(path)
        return current

    def _point_items_link(self, target: Path) -> None:
        """Points `items` at `target` atomically (a relative link, so the data folder can move)."""
        tmp = self._dir / "items.link-tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target.name, tmp)
        os.replace(tmp, self._items_link)

    def _next_generation(self) -> Path:
        numbers = [int(p.name.split(".", 1)[1]) for p in self._dir.glob("items.*") if p.name.split(".", 1)[1].isdigit()]
        return self._dir / f"items.{max(numbers, default=0) + 1}"

    def _open(self, path: Path, indexes: Mapping[str, FieldType]) -> EdgeShard:
        if (path / "edge_config.json").exists():
            try:
                shard = EdgeShard.load(str(path), self._config())
            except Exception as exc:
                if "incompatible" in str(exc).lower():
                    raise DimensionMismatchError(
                        f"the shard in {path} was created with another vector configuration than "
                        f"dimension {self._dimension}, cosine: {exc}"
                    ) from exc
                raise
        else:
            shard = EdgeShard.create(str(path), self._config())
        if indexes:
            existing = set(shard.info().payload_schema)
            for name, kind in indexes.items():
                if name not in existing:
                    shard.update(UpdateOperation.create_field_index(name, _SCHEMA_TYPES[kind]))
        return shard

    def _index_fields(self) -> dict[str, FieldType]:
        fields = dict(self._schema)
        fields[ITEM_ID_FIELD] = FieldType.KEYWORD
        fields[POPULARITY_FIELD] = FieldType.INTEGER
        return fields

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
        """True once an HNSW index has been built and swapped in (or was loaded) and no build is running.
        Points written after a build are searched exactly (in the appendable segment) until the next one."""
        return self._index_built and not self._indexer.running

    @property
    def index_building(self) -> bool:
        return self._indexer.running

    @property
    def index_build_phase(self) -> str:
        """idle | copying | optimizing | installing."""
        return self._indexer.phase

    @property
    def index_builds_completed(self) -> int:
        return self._indexer.builds_completed

    @property
    def last_index_error(self) -> str | None:
        return self._indexer.last_error

    # -- items ---------------------------------------------------------------------------------------------

    def upsert_items(self, items: Sequence[Item]) -> int:
        valid = validate_items(items, self._dimension, self._schema)
        if not valid:
            return 0
        with self._write_lock:
            self._check_open()
            ids = _item_pids(item.item_id for item in valid)
            existing = {
                payload_item_id(r.payload): popularity_of(r.payload) for r in self._items.retrieve(ids, True, False)
            }
            points = [
                Point(pid, list(item.vector or ()), item_payload(item, existing.get(item.item_id, 0)))
                for pid, item in zip(ids, valid, strict=True)
            ]
            self._items.update(UpdateOperation.upsert_points(points))
            self._mark_dirty(item.item_id for item in valid)
        self._durable()
        return len(valid)

    def delete_items(self, ids: Sequence[str]) -> int:
        wanted = unique(validate_ids(ids, "item id"))
        if not wanted:
            return 0
        with self._write_lock:
            self._check_open()
            point_ids = _item_pids(wanted)
            found = len(self._items.retrieve(point_ids, False, False))
            self._items.update(UpdateOperation.delete_points(point_ids))
            self._mark_dirty(wanted)
        self._durable()
        return found

    def get_items(self, ids: Sequence[str], with_vectors: bool = False, skip_missing: bool = False) -> list[Item]:
        wanted = validate_ids(ids, "item id")
        with self._rw.read():
            self._check_open()
            point_ids = _item_pids(unique(wanted))
            records = self._items.retrieve(point_ids, True, with_vectors)
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
        with self._rw.read():
            self._check_open()
            return self._items.count(CountRequest(exact=True))

    # -- queries -------------------------------------------------------------------------------------------

    def search(self, queries: Sequence[SearchQuery]) -> list[list[ScoredItem]]:
        for index, query in enumerate(queries):
            validate_search_query(query, self._dimension, self._schema, index)
        if not queries:
            return []
        requests = [
            QueryRequest(
                limit=q.limit,
                offset=q.offset,
                query=Query.Nearest(list(map(float, q.vector))),
                filter=to_edge_filter(
                    q.filter, [item_point_id(i) for i in q.exclude_ids], [item_point_id(i) for i in q.only_ids]
                ),
                with_payload=True,
                with_vector=q.with_vectors,
            )
            for q in queries
        ]
        with self._rw.read():
            self._check_open()
            results = self._items.query_batch(QueryBatchRequest(requests))
        return [
            [scored_item(p, p.score, q.with_vectors) for p in points]
            for q, points in zip(queries, results, strict=True)
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
        with self._rw.read():
            self._check_open()
            point_ids = _item_pids(examples)
            vectors = {
                payload_item_id(r.payload): as_vector(r.vector) for r in self._items.retrieve(point_ids, True, True)
            }
            missing = [i for i in examples if vectors.get(i) is None]
            if missing:
                raise not_found("example item", missing)
            request = QueryRequest(
                limit=limit,
                query=Query.RecommendBestScore(
                    RecommendQuery(
                        positives=[list(vectors[i] or ()) for i in positives],
                        negatives=[list(vectors[i] or ()) for i in negatives],
                    )
                ),
                filter=to_edge_filter(filter, [item_point_id(i) for i in unique([*examples, *excluded])]),
                with_payload=True,
                with_vector=False,
            )
            points = self._items.query(request)
        return [scored_item(p, p.score, False) for p in points]

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
        request = QueryRequest(
            limit=limit,
            offset=offset,
            query=OrderBy(POPULARITY_FIELD, Direction.Desc),
            filter=to_edge_filter(filter, [item_point_id(i) for i in excluded]),
            with_payload=True,
            with_vector=False,
        )
        with self._rw.read():
            self._check_open()
            points = self._items.query(request)
        return [
            scored_item(p, float(p.order_value if p.order_value is not None else popularity_of(p.payload)), False)
            for p in points
        ]

    # -- users ---------------------------------------------------------------------------------------------

    def append_user_events(self, user_id: str, events: Sequence[UserEvent]) -> UserProfile:
        validate_id(user_id, "user id")
        new_events = validate_events(events)
        with self._write_lock:
            self._check_open()
            event_items = unique([e.item_id for e in new_events])
            records = {payload_item_id(r.payload): r for r in self._items.retrieve(_item_pids(event_items), True, True)}
            missing = [i for i in event_items if i not in records]
            if missing:
                raise not_found("item", missing)
            user_pid = user_point_id(user_id)
            old = self._users.retrieve([user_pid], True, False)
            old_payload = (old[0].payload or {}) if old else {}
            old_events = events_from_payload(old_payload.get(EVENTS_FIELD))
            shown = feedback.forget_shown(
                feedback.shown_from_payload(old_payload.get(feedback.SHOWN_FIELD)), event_items
            )
            history = merge_history(old_events, new_events, self._max_history)
            vectors = {i: as_vector(r.vector) for i, r in records.items()}
            others = unique([e.item_id for e in history if e.item_id not in vectors])
            if others:
                for r in self._items.retrieve(_item_pids(others), True, True):
                    vectors[payload_item_id(r.payload)] = as_vector(r.vector)
            vector = profiles.history_profile(history, vectors, self._half_life)
            self._users.update(
                UpdateOperation.upsert_points(
                    [
                        Point(
                            user_pid,
                            list(vector) if vector is not None else {},
                            {
                                USER_ID_FIELD: user_id,
                                EVENTS_FIELD: events_to_payload(history),
                                feedback.SHOWN_FIELD: feedback.shown_to_payload(shown),
                            },
                        )
                    ]
                )
            )
            self._add_popularity(popularity_increments(new_events), records)
            self._mark_dirty(event_items)
            self._attribute(new_events)
        self._durable()
        return UserProfile(user_id=user_id, vector=vector, events=history, shown_counts=shown)

    def _attribute(self, events: Sequence[UserEvent]) -> None:
        """Marks shown items engaged (and converted) on the impressions the events name."""
        for rid in feedback.recommendation_ids(events):
            for impression in feedback.attribute(self._impressions_of(rid), events):
                pid = feedback.impression_point_id(impression.recommendation_id, impression.page)
                self._feedback.update(UpdateOperation.set_payload([pid], feedback.to_payload(impression)))

    def _add_popularity(self, increments: Mapping[str, int], records: Mapping[str, Any] | None = None) -> None:
        """Adds to items' popularity counts (never below zero); items deleted meanwhile are skipped."""
        if records is None:
            found = self._items.retrieve(_item_pids(increments), True, False)
            records = {payload_item_id(r.payload): r for r in found}
        for item_id, increment in increments.items():
            if item_id not in records:
                continue
            new_value = max(0, popularity_of(records[item_id].payload) + increment)
            self._items.update(UpdateOperation.set_payload([item_point_id(item_id)], {POPULARITY_FIELD: new_value}))

    def get_user(self, user_id: str) -> UserProfile:
        validate_id(user_id, "user id")
        with self._rw.read():
            self._check_open()
            records = self._users.retrieve([user_point_id(user_id)], True, True)
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
            pid = user_point_id(user_id)
            records = self._users.retrieve([pid], True, False)
            # Privacy: the user's impressions go too (they also go when, oddly, the profile is already gone).
            of_user = _match(USER_ID_FIELD, user_id)
            impressions = self._feedback.count(CountRequest(exact=True, filter=of_user))
            if impressions:
                self._feedback.update(UpdateOperation.delete_points_by_filter(of_user))
            if not records and not impressions:
                raise not_found("user", [user_id])
            if records:
                self._delete_profile(pid, records[0].payload)
        self._durable()

    def _delete_profile(self, pid: Any, payload: Mapping[str, Any] | None) -> None:
        self._users.update(UpdateOperation.delete_points([pid]))
        # The user's kept events no longer count towards popularity either.
        events = events_from_payload((payload or {}).get(EVENTS_FIELD))
        decrements = {i: -n for i, n in popularity_increments(events).items()}
        if decrements:
            self._add_popularity(decrements)
            self._mark_dirty(decrements)

    def count_users(self) -> int:
        with self._rw.read():
            self._check_open()
            return self._users.count(CountRequest(exact=True))

    # -- feedback log --------------------------------------------------------------------------------------

    def record_impression(self, impression: Impression) -> None:
        new = feedback.validate_impression(impression)
        pid = feedback.impression_point_id(new.recommendation_id, new.page)
        with self._write_lock:
            self._check_open()
            found = self._feedback.retrieve([pid], True, False)
            old = feedback.from_payload(found[0].payload) if found else None
            stored, counted = feedback.replacement(old, new)
            self._feedback.update(UpdateOperation.upsert_points([Point(pid, {}, feedback.to_payload(stored))]))
            if stored.user_id and counted:
                self._count_shown(stored.user_id, counted)
        self._durable()

    def _count_shown(self, user_id: str, items: Sequence[str]) -> None:
        user_pid = user_point_id(user_id)
        found = self._users.retrieve([user_pid], True, False)
        if found:
            shown = feedback.shown_from_payload((found[0].payload or {}).get(feedback.SHOWN_FIELD))
            update = {feedback.SHOWN_FIELD: feedback.shown_to_payload(feedback.bump_shown(shown, items))}
            self._users.update(UpdateOperation.set_payload([user_pid], update))
        else:  # a user seen only through impressions so far: a profile with no events and no vector
            payload = {
                USER_ID_FIELD: user_id,
                EVENTS_FIELD: [],
                feedback.SHOWN_FIELD: feedback.shown_to_payload(feedback.bump_shown({}, items)),
            }
            self._users.update(UpdateOperation.upsert_points([Point(user_pid, {}, payload)]))

    def _impressions_of(self, recommendation_id: str) -> list[Impression]:
        out: list[Impression] = []
        offset: Any = None
        while True:
            request = ScrollRequest(
                offset=offset,
                limit=256,
                filter=_match(feedback.RECOMMENDATION_FIELD, recommendation_id),
                with_payload=True,
                with_vector=False,
            )
            records, offset = self._feedback.scroll(request)
            out.extend(feedback.from_payload(r.payload) for r in records)
            if offset is None:
                return feedback.by_page(out)

    def get_impressions(self, recommendation_id: str) -> list[Impression]:
        feedback.validate_recommendation_id(recommendation_id)
        with self._rw.read():
            self._check_open()
            found = self._impressions_of(recommendation_id)
        if not found:
            raise not_found("recommendation", [recommendation_id])
        return found

    def list_impressions(self, experiment: str, limit: int, page_token: str) -> tuple[list[Impression], str]:
        start = feedback.validate_list(experiment, limit, page_token)
        request = ScrollRequest(
            offset=None if start is None else uuid.UUID(start),
            limit=limit,
            filter=_match(feedback.EXPERIMENT_FIELD, experiment) if experiment else None,
            with_payload=True,
            with_vector=False,
        )
        with self._rw.read():
            self._check_open()
            records, next_offset = self._feedback.scroll(request)
        return [feedback.from_payload(r.payload) for r in records], "" if next_offset is None else str(next_offset)

    # -- info, lifecycle -----------------------------------------------------------------------------------

    def info(self) -> StoreInfo:
        with self._rw.read():
            self._check_open()
            items = self._items.info()
            users = self._users.count(CountRequest(exact=True))
        return StoreInfo(
            backend=self.backend,
            items=items.points_count,
            users=users,
            indexed_vectors=items.indexed_vectors_count,
            dimension=self._dimension,
            distance="cosine",
            payload_indexes=tuple(sorted(items.payload_schema)),
            index_ready=self.index_ready,
        )

    def flush(self) -> None:
        with self._write_lock:
            self._check_open()
            self._items.flush()
            self._users.flush()
            self._feedback.flush()

    def _flush_shards(self) -> None:
        # Under the read lock: an index swap or close waits for the flush, writers do not.
        with self._rw.read():
            self._check_open()
            self._items.flush()
            self._users.flush()
            self._feedback.flush()

    def _durable(self) -> None:
        """With sync_writes, waits until the writes made so far are on disk (group commit)."""
        if self._commit is not None:
            self._commit.sync()

    def close(self) -> None:
        self._indexer.close()
        with self._write_lock, self._rw.write():
            if self._closed:
                return
            self._closed = True
            for shard in (self._items, self._users, self._feedback):
                try:
                    shard.flush()
                finally:
                    shard.close()

    # -- background index build ----------------------------------------------------------------------------

    def start_index_build(self) -> bool:
        """Starts building the HNSW index in a child process and returns at once (False when a build is
        already running). Searches stay exact on the current shard until the built one is swapped in."""
        self._check_open()
        return self._indexer.start()

    def wait_for_index(self, timeout_s: float | None = None) -> bool:
        """Waits for a running build; True when none is running afterwards."""
        return self._indexer.wait(timeout_s)

    def snapshot_for_index(self) -> Path:
        with self._write_lock:
            self._check_open()
            staging = self._next_generation()
            self._items.flush()
            shutil.copytree(self._items_dir, staging)
            self._dirty = set()
            return staging

    def discard_index(self, staging: Path) -> None:
        with self._write_lock:
            self._dirty = None
            if staging.resolve() != self._items_dir.resolve():
                shutil.rmtree(staging, ignore_errors=True)

    def install_index(self, staging: Path) -> int:
        with self._write_lock:
            self._check_open()
            dirty = sorted(self._dirty or ())
            # Open the optimised copy and replay onto it the current state of every item written since the
            # copy. Searches keep running on the live shard meanwhile; only writers wait.
            new = EdgeShard.load(str(staging), self._config())
            try:
                for start in range(0, len(dirty), 1000):
                    chunk = dirty[start : start + 1000]
                    current = {
                        payload_item_id(r.payload): r for r in self._items.retrieve(_item_pids(chunk), True, True)
                    }
                    upserts = [
                        Point(
                            item_point_id(i),
                            list(as_vector(current[i].vector) or ()),
                            dict(current[i].payload or {}),
                        )
                        for i in chunk
                        if i in current
                    ]
                    deletes = _item_pids(i for i in chunk if i not in current)
                    if upserts:
                        new.update(UpdateOperation.upsert_points(upserts))
                    if deletes:
                        new.update(UpdateOperation.delete_points(deletes))
                new.flush()
                # From here a restart loads the new shard, which holds every write.
                self._point_items_link(staging)
            except Exception:
                new.close()
                raise
            old, old_dir = self._items, self._items_dir
            swap_started = time.monotonic()
            with self._rw.write():  # searches wait only for in-flight ones to finish and a pointer swap
                self._items, self._items_dir = new, staging
                self._dirty = None
                self._index_built = True
            paused_ms = (time.monotonic() - swap_started) * 1000
            try:
                old.close()
            except Exception:
                logger.exception("could not close the replaced items shard")
            shutil.rmtree(old_dir, ignore_errors=True)
        logger.info(
            "swapped in the indexed items shard (%d writes replayed); searches paused %.1f ms", len(dirty), paused_ms
        )
        return len(dirty)

    def _mark_dirty(self, ids: Iterable[str]) -> None:
        if self._dirty is not None:
            self._dirty.update(ids)


def _item_pids(ids: Iterable[str]) -> list[Any]:
    return [item_point_id(i) for i in ids]


def _match(field: str, value: str) -> EdgeFilter:
    return EdgeFilter(must=[FieldCondition(key=field, match=MatchValue(value))])
