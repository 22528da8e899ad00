"""Users, events, popularity and attribution on either backend, written so that any number of retriever
replicas can write to one store at once, and retries count nothing twice. docs/reliability.md states the
guarantee; this is how it is kept:

- **Events are points of their own** in an `events` collection (shard), keyed by uuid5(user id, event id) and
  written insert-only: the same event again, from a retry or from another replica, changes nothing. Events
  are never modified; they go only with their user (DeleteUser).
- **Item popularity** is the number of events on the item: a copy in the item's payload (the field `popular`
  orders and filters by), which a writer sets from an exact count of the log, never by adding to a value it
  read. The writer counts again after setting it; when the count moved on meanwhile it sets it again, so
  whichever writer finishes last leaves it right.
- **A user's point** in `users` is a snapshot: the newest `max_history` events, the profile vector computed
  from them, and the shown counts computed from the user's newest impressions. It carries a `Version`: the
  user's incarnation and the events and impressions counted before it was computed. It replaces the stored
  point only when that is of an older incarnation or saw no more events and no more impressions (a
  conditional upsert, which the engine applies atomically), so no snapshot replaces one that saw more of
  either. A writer returns once the stored snapshot saw at least what it counted after its own writes, so
  the user's next read, through any replica, sees them.
- **DeleteUser** first writes a tombstone of the next incarnation, then deletes the events it lists and the
  user's impressions, then writes a second tombstone: a snapshot computed from the old events is older than
  one of the two and is refused or replaced. Events that land after the listing stay and start a fresh
  user, whose snapshot the delete writes before it returns.
- **Impressions** are points keyed by (recommendation id, page). What they led to (engaged, converted) is
  read from the events that name the recommendation, never written onto the impression, so two writers
  never change one impression's attribution.

Every backend provides the engine calls (`LogEngine`); the logic above is written once, here.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import structlog

from services.common.errors import InvalidArgumentError, UnavailableError
from services.common.events import (
    MAX_EVENT_ID_CHARS,
    EventIdDeriver,
    event_time_problem,
    event_type_problem,
    event_weight_problem,
)
from services.retriever import feedback, profiles
from services.retriever.store import (
    MAX_RECOMMENDATION_ID,
    USER_ID_FIELD,
    Impression,
    UserEvent,
    UserProfile,
    events_from_payload,
    not_found,
    unique,
    validate_id,
)

log = structlog.get_logger(__name__)

EVENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "recsys:retriever:event")
# Fields of an event point; user_id, item_id and recommendation_id have keyword indexes, timestamp a float one.
ITEM_FIELD = "item_id"
TIMESTAMP_FIELD = "timestamp"
EVENT_KEYWORD_FIELDS = (USER_ID_FIELD, ITEM_FIELD, feedback.RECOMMENDATION_FIELD)
# Fields of a user's snapshot (see Version); a point without IMPRESSIONS_FIELD was written by an earlier layout.
INCARNATION_FIELD = "incarnation"
EVENTS_FIELD = "events_counted"
IMPRESSIONS_FIELD = "impressions_counted"
STATE_FIELD = "state"
ENCODER_FIELD = "encoder"  # the encoder whose item vectors the snapshot's profile vector was computed from
DELETED = "deleted"
# The shown counts (rotation: items shown again and again without a reaction move down) come from this many of the
# user's newest recorded pages. Each page recorded reads them again: at 200 that read was most of a Recommend's
# retriever CPU for users with a long record (1.9 ms for 200 pages against 0.4 ms for 20, 200k impressions).
SHOWN_PAGES = 20
# How often a writer recomputes when others keep writing the same user or item under it; each round means
# another writer finished a write meanwhile, so running out takes sustained contention on one key.
MAX_ROUNDS = 20


class LogEngine(Protocol):
    """The engine calls the event log needs; each is one atomic engine operation (or a read)."""

    def item_vectors(self, item_ids: Sequence[str]) -> tuple[str, dict[str, tuple[float, ...] | None]]:
        """The serving encoder and, read at the same moment, the vectors of the items that exist (missing ones
        are left out)."""
        ...

    def serving_encoder(self) -> str:
        """The encoder whose vectors the served items carry."""
        ...

    def set_popularity(self, counts: Mapping[str, int]) -> None:
        """Sets the items' popularity to these counts (items that do not exist are skipped)."""
        ...

    def item_ids(self, offset: Any, limit: int) -> tuple[list[str], Any]:
        """A page of every item id and the next page's offset (None after the last)."""
        ...

    def insert_events(self, points: Sequence[tuple[uuid.UUID, dict[str, Any]]]) -> None:
        """Writes event points that do not exist yet; existing ones are left as they are."""
        ...

    def count_events(self, user_id: str) -> int: ...

    def newest_events(self, user_id: str, limit: int) -> list[dict[str, Any]]:
        """Payloads of the user's newest events by timestamp, newest first."""
        ...

    def event_counts(self, item_ids: Sequence[str]) -> dict[str, int]:
        """Events per item, exact (items with none are left out)."""
        ...

    def events_of_recommendations(self, recommendation_ids: Sequence[str]) -> list[dict[str, Any]]: ...

    def events_of_user(self, user_id: str) -> list[tuple[uuid.UUID, str]]:
        """Point id and item id of each of the user's events."""
        ...

    def delete_events(self, point_ids: Sequence[uuid.UUID]) -> None: ...

    def read_user(self, user_id: str) -> tuple[dict[str, Any], tuple[float, ...] | None] | None: ...

    def write_user(
        self, user_id: str, version: Version, payload: dict[str, Any], vector: tuple[float, ...] | None
    ) -> None:
        """Writes the user's point (its payload carries `version`'s fields) where there is none, or the stored
        one has no IMPRESSIONS_FIELD, an older incarnation, or the same incarnation and counts no higher than
        `version`'s; otherwise leaves it."""
        ...

    def legacy_users(self, limit: int) -> list[dict[str, Any]]:
        """Payloads of user points without IMPRESSIONS_FIELD (written by an earlier layout), tombstones left out:
        those name no user, and any write replaces them."""
        ...

    def count_users(self) -> int:
        """User points that are not tombstones."""
        ...

    def upsert_impressions(self, points: Sequence[tuple[uuid.UUID, dict[str, Any]]]) -> None: ...

    def impressions_of(self, recommendation_id: str) -> list[dict[str, Any]]: ...

    def list_impressions(
        self, experiment: str, limit: int, start: str | None
    ) -> tuple[list[dict[str, Any]], str | None]: ...

    def count_impressions(self, user_id: str) -> int: ...

    def newest_impressions(self, user_id: str, limit: int) -> list[dict[str, Any]]: ...

    def recorded_recommendations(self, recommendation_ids: Sequence[str]) -> set[str]:
        """The ids among these that have at least one recorded impression."""
        ...

    def delete_impressions_of_user(self, user_id: str) -> int:
        """Deletes them; returns how many there were."""
        ...


# -- events ------------------------------------------------------------------------------------------------


def event_point_id(user_id: str, event_id: str) -> uuid.UUID:
    return uuid.uuid5(EVENT_NAMESPACE, json.dumps([user_id, event_id]))


def validate_events(user_id: str, events: Sequence[UserEvent], now: float | None = None) -> list[UserEvent]:
    """The events with their ids (derived from the content where none was given, identical events of the call
    numbered), each id once. Checks what the gateway checks: a known type, a time up to the clock skew past now,
    a weight above 0."""
    if not events:
        raise InvalidArgumentError("events is empty: give at least one event")
    now = time.time() if now is None else now
    derive = EventIdDeriver()
    out: dict[str, UserEvent] = {}
    for index, event in enumerate(events):
        where = f"events[{index}]"
        validate_id(event.item_id, f"{where}.item_id")
        if not isinstance(event.event_type, str):
            raise InvalidArgumentError(f"{where}.event_type must be a string")
        for problem in (
            event_type_problem(event.event_type),
            _time_problem(event.timestamp, now),
            event_weight_problem(event.weight),
        ):
            if problem:
                raise InvalidArgumentError(f"{where} on {event.item_id!r}: {problem}")
        rid = event.recommendation_id
        if not isinstance(rid, str) or len(rid) > MAX_RECOMMENDATION_ID:
            raise InvalidArgumentError(
                f"{where}.recommendation_id must be a string of at most {MAX_RECOMMENDATION_ID} characters (or empty)"
            )
        event_id = event.event_id
        if not isinstance(event_id, str) or len(event_id) > MAX_EVENT_ID_CHARS:
            raise InvalidArgumentError(
                f"{where}.event_id must be a string of at most {MAX_EVENT_ID_CHARS} characters (or empty: derived "
                f"from the event's content)"
            )
        if not event_id:
            event_id = derive(user_id, event.item_id, event.event_type, event.timestamp, rid)
        out.setdefault(
            event_id, replace(event, timestamp=float(event.timestamp), weight=float(event.weight), event_id=event_id)
        )
    return list(out.values())


def _time_problem(timestamp: object, now: float) -> str:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        return f"timestamp must be a number of Unix seconds, got {timestamp!r}"
    return event_time_problem(float(timestamp), now)


def event_payload(user_id: str, event: UserEvent) -> dict[str, Any]:
    return {
        USER_ID_FIELD: user_id,
        "event_id": event.event_id,
        ITEM_FIELD: event.item_id,
        "event_type": event.event_type,
        TIMESTAMP_FIELD: event.timestamp,
        "weight": event.weight,
        feedback.RECOMMENDATION_FIELD: event.recommendation_id,
    }


def event_from_payload(payload: Mapping[str, Any]) -> UserEvent:
    return UserEvent(
        item_id=str(payload[ITEM_FIELD]),
        event_type=str(payload["event_type"]),
        timestamp=float(payload[TIMESTAMP_FIELD]),
        weight=float(payload["weight"]),
        recommendation_id=str(payload.get(feedback.RECOMMENDATION_FIELD, "")),
        event_id=str(payload.get("event_id", "")),
    )


def oldest_first(events: Iterable[UserEvent]) -> list[UserEvent]:
    # Ties in time are ordered by event id, so every writer computes the same history from the same events.
    return sorted(events, key=lambda e: (e.timestamp, e.event_id))


# -- snapshots ---------------------------------------------------------------------------------------------


def _history_to_payload(history: Sequence[UserEvent]) -> str:
    # One JSON string, not a list of objects: the engines convert payloads value by value (see feedback.py).
    rows = [[e.item_id, e.event_type, e.timestamp, e.weight, e.recommendation_id, e.event_id] for e in history]
    return json.dumps(rows, separators=(",", ":"))


def _history_from_payload(raw: object) -> tuple[UserEvent, ...]:
    if not isinstance(raw, str):
        return ()
    return tuple(
        UserEvent(str(i), str(t), float(ts), float(w), str(r), str(e)) for i, t, ts, w, r, e in json.loads(raw)
    )


@dataclass(frozen=True, slots=True)
class Version:
    """What a snapshot was computed from: the user's incarnation (raised by each DeleteUser tombstone) and the
    user's events and impressions counted before computing it. Within an incarnation events and impressions
    are only added, so a higher count saw everything a lower one did. The counts are compared each on its
    own: a sum, or events before impressions, would let a snapshot that saw more of one replace one that saw
    more of the other."""

    incarnation: int
    events: int
    impressions: int

    def covers(self, other: Version) -> bool:
        """Whether a snapshot of this version saw everything one of `other` saw."""
        return (
            self.incarnation == other.incarnation
            and self.events >= other.events
            and self.impressions >= other.impressions
        )

    def fields(self) -> dict[str, int]:
        return {INCARNATION_FIELD: self.incarnation, EVENTS_FIELD: self.events, IMPRESSIONS_FIELD: self.impressions}


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: Version
    deleted: bool
    history: tuple[UserEvent, ...]
    vector: tuple[float, ...] | None
    shown: dict[str, int]
    encoder: str = ""


def read_snapshot(found: tuple[dict[str, Any], tuple[float, ...] | None] | None) -> Snapshot | None:
    if found is None:
        return None
    payload, vector = found
    # Counts of -1 where an earlier layout left them out: such a snapshot covers nothing and is recomputed.
    version = Version(
        int(payload.get(INCARNATION_FIELD, 0)),
        int(payload.get(EVENTS_FIELD, -1)),
        int(payload.get(IMPRESSIONS_FIELD, -1)),
    )
    return Snapshot(
        version=version,
        deleted=payload.get(STATE_FIELD) == DELETED,
        history=_history_from_payload(payload.get("history")),
        vector=vector,
        shown=feedback.shown_from_payload(payload.get(feedback.SHOWN_FIELD)),
        encoder=str(payload.get(ENCODER_FIELD, "")),
    )


def shown_counts(impressions: Iterable[Impression], history: Sequence[UserEvent]) -> dict[str, int]:
    """Times each item was shown on the user's pages after the user's last event on it (by time), least
    recently shown first, the newest feedback.MAX_SHOWN items."""
    last_event: dict[str, float] = {}
    for event in history:
        last_event[event.item_id] = max(event.timestamp, last_event.get(event.item_id, event.timestamp))
    shown: dict[str, int] = {}
    for impression in sorted(impressions, key=lambda i: (i.timestamp, i.recommendation_id, i.page)):
        counted = [i for i in unique(list(impression.item_ids)) if impression.timestamp > last_event.get(i, -1.0)]
        shown = feedback.bump_shown(shown, counted)
    return shown


# -- the log -----------------------------------------------------------------------------------------------


class EventLog:
    def __init__(self, engine: LogEngine, max_history: int, half_life_events: float) -> None:
        self._engine = engine
        self._max_history = max_history
        self._half_life = half_life_events

    # -- writes ----------------------------------------------------------------------------------------------

    def append(self, user_id: str, events: Sequence[UserEvent]) -> UserProfile:
        validate_id(user_id, "user id")
        checked = validate_events(user_id, events)
        items = unique([e.item_id for e in checked])
        _, vectors = self._engine.item_vectors(items)
        missing = [i for i in items if i not in vectors]
        if missing:
            raise not_found("item", missing)
        self._engine.insert_events([(event_point_id(user_id, e.event_id), event_payload(user_id, e)) for e in checked])
        profile = self._refresh_user(user_id)
        self.refresh_popularity(items)
        if profile is None:  # a DeleteUser of this user ran at the same moment and took these events with it
            return UserProfile(user_id=user_id, vector=None, events=())
        return profile

    def record_impressions(self, impressions: Sequence[Impression], max_items: int | None = None) -> None:
        """Stores the pages in one write (each replaces the same recommendation id and page), then each user's
        snapshot once; nothing is stored when one page is invalid."""
        stored = [feedback.validate_impression(impression, max_items) for impression in impressions]
        self._engine.upsert_impressions(
            [(feedback.impression_point_id(s.recommendation_id, s.page), feedback.to_payload(s)) for s in stored]
        )
        for user_id in unique([s.user_id for s in stored if s.user_id]):
            # A page recorded again with other items leaves the counts as they were: recompute at the same version.
            self._refresh_user(user_id, recompute_same_version=True)

    def delete_user(self, user_id: str) -> None:
        validate_id(user_id, "user id")
        current = read_snapshot(self._engine.read_user(user_id))
        known = current is not None and not current.deleted
        if not known and not self._engine.count_events(user_id) and not self._engine.count_impressions(user_id):
            raise not_found("user", [user_id])
        # The tombstone first: from here no snapshot of the old incarnation can be written.
        self._write_tombstone(user_id)
        # By id, the events listed: one written after the listing stays (it lands after the delete), and each
        # deleted one's item is known, so its popularity is set again below.
        events = self._engine.events_of_user(user_id)
        for start in range(0, len(events), 1024):
            self._engine.delete_events([point_id for point_id, _ in events[start : start + 1024]])
        self._engine.delete_impressions_of_user(user_id)
        # A writer that read the first tombstone may have counted the old events before they went and written
        # a snapshot of them under it: the second tombstone replaces that snapshot and refuses a later one.
        self._write_tombstone(user_id)
        # Events and impressions written after the listing are a fresh user: snapshot them now, so that
        # what a racing write returned stays readable.
        self._refresh_user(user_id)
        self.refresh_popularity(unique([item_id for _, item_id in events]))

    def _write_tombstone(self, user_id: str) -> None:
        """A tombstone one incarnation above the stored point's."""
        current = read_snapshot(self._engine.read_user(user_id))
        version = Version((current.version.incarnation if current else 0) + 1, 0, 0)
        self._engine.write_user(user_id, version, {**version.fields(), STATE_FIELD: DELETED}, None)

    def refresh_popularity(self, item_ids: Sequence[str]) -> None:
        """Sets each item's popularity to its count of events, until a count taken after setting agrees."""
        for start in range(0, len(item_ids), 512):
            pending = list(item_ids[start : start + 512])
            for _ in range(MAX_ROUNDS):
                counts = {i: 0 for i in pending} | self._engine.event_counts(pending)
                self._engine.set_popularity(counts)
                again = self._engine.event_counts(pending)
                pending = [i for i in pending if again.get(i, 0) != counts[i]]
                if not pending:
                    break
            else:
                log.warning("popularity still changing after repeated counts; the next event repairs it", items=pending)

    def _refresh_user(self, user_id: str, recompute_same_version: bool = False) -> UserProfile | None:
        """Writes a snapshot that covers everything of the user written so far; None when the user has nothing."""
        for _ in range(MAX_ROUNDS):
            current = read_snapshot(self._engine.read_user(user_id))
            version = Version(
                current.version.incarnation if current else 0,
                self._engine.count_events(user_id),
                self._engine.count_impressions(user_id),
            )
            if version.events + version.impressions == 0:
                return None
            # A stored snapshot that saw all of it is the answer (a tombstone covers no count above 0), unless a
            # page recorded again needs its shown counts recomputed at the same version.
            if (
                current is not None
                and current.version.covers(version)
                and not (recompute_same_version and current.version == version)
            ):
                return self._profile(user_id, current)
            serving = self._engine.serving_encoder()
            if (
                current is not None
                and not current.deleted
                and current.version.events == version.events
                and current.encoder == serving
            ):
                history, vector, encoder = current.history, current.vector, serving  # only impressions changed
            else:
                history, encoder, vector = self._history(user_id)
            pages = self._engine.newest_impressions(user_id, SHOWN_PAGES) if version.impressions else []
            shown = shown_counts((feedback.from_payload(p) for p in pages), history)
            payload = {
                USER_ID_FIELD: user_id,
                **version.fields(),
                ENCODER_FIELD: encoder,
                "history": _history_to_payload(history),
                feedback.SHOWN_FIELD: feedback.shown_to_payload(shown),
            }
            self._engine.write_user(user_id, version, payload, vector)
            after = read_snapshot(self._engine.read_user(user_id))
            if after is not None and after.version.covers(version):
                return self._profile(user_id, after)
            # Refused: a DeleteUser came between (a new incarnation), or another writer's snapshot saw more
            # events and fewer impressions than this one, or the other way round: count again.
        raise UnavailableError(f"user {user_id!r} kept changing while their profile was computed: retry the call")

    def _history(self, user_id: str) -> tuple[tuple[UserEvent, ...], str, tuple[float, ...] | None]:
        """The user's newest events, the serving encoder, and the profile vector from its item vectors."""
        newest = self._engine.newest_events(user_id, self._max_history)
        history = tuple(oldest_first(event_from_payload(p) for p in newest))
        encoder, vectors = self._engine.item_vectors(unique([e.item_id for e in history]))
        return history, encoder, profiles.history_profile(history, vectors, self._half_life)

    def _profile(self, user_id: str, snapshot: Snapshot) -> UserProfile:
        vector, encoder = snapshot.vector, snapshot.encoder
        if snapshot.history and encoder != self._engine.serving_encoder():
            # Computed before a switch of encoder: its vector would meet the other encoder's items. Computed
            # again from the served vectors; the user's next write stores it.
            encoder, vectors = self._engine.item_vectors(unique([e.item_id for e in snapshot.history]))
            vector = profiles.history_profile(snapshot.history, vectors, self._half_life)
        return UserProfile(
            user_id=user_id,
            vector=vector,
            events=snapshot.history,
            shown_counts=snapshot.shown,
            encoder_version=encoder,
        )

    # -- reads -----------------------------------------------------------------------------------------------

    def get_user(self, user_id: str) -> UserProfile:
        validate_id(user_id, "user id")
        snapshot = read_snapshot(self._engine.read_user(user_id))
        if snapshot is None or snapshot.deleted:
            raise not_found("user", [user_id])
        return self._profile(user_id, snapshot)

    def get_impressions(self, recommendation_id: str) -> list[Impression]:
        feedback.validate_recommendation_id(recommendation_id)
        found = [feedback.from_payload(p) for p in self._engine.impressions_of(recommendation_id)]
        if not found:
            raise not_found("recommendation", [recommendation_id])
        return self._attributed(feedback.by_page(found))

    def list_impressions(self, experiment: str, limit: int, page_token: str) -> tuple[list[Impression], str]:
        start = feedback.validate_list(experiment, limit, page_token)
        payloads, next_offset = self._engine.list_impressions(experiment, limit, start)
        return self._attributed([feedback.from_payload(p) for p in payloads]), next_offset or ""

    def unknown_recommendations(self, events: Sequence[UserEvent]) -> list[str]:
        """The recommendation ids the events name that no recorded impression has."""
        named = feedback.recommendation_ids(events)
        if not named:
            return []
        recorded = self._engine.recorded_recommendations(named)
        return [r for r in named if r not in recorded]

    def _attributed(self, impressions: list[Impression]) -> list[Impression]:
        """The impressions with what they led to: shown items with an event from that recommendation are
        engaged, and converted on a "purchase"."""
        rids = unique([i.recommendation_id for i in impressions])
        acted: dict[str, dict[str, bool]] = {}
        for start in range(0, len(rids), 256):
            for payload in self._engine.events_of_recommendations(rids[start : start + 256]):
                by_item = acted.setdefault(str(payload[feedback.RECOMMENDATION_FIELD]), {})
                item = str(payload[ITEM_FIELD])
                by_item[item] = by_item.get(item, False) or payload["event_type"] == feedback.PURCHASE
        out = []
        for impression in impressions:
            by_item = acted.get(impression.recommendation_id, {})
            shown = unique(list(impression.item_ids))
            out.append(
                replace(
                    impression,
                    engaged_item_ids=tuple(i for i in shown if i in by_item),
                    converted_item_ids=tuple(i for i in shown if by_item.get(i)),
                )
            )
        return out

    def count_users(self) -> int:
        return self._engine.count_users()

    # -- state written before the event log --------------------------------------------------------------------

    def migrate(self) -> int:
        """Moves users written by the layout before the event log (history in the user's payload) into it: their
        kept events become event points, their snapshot is computed anew, and every item's popularity is
        recounted from the log. Idempotent, and safe to run from two replicas at once. Returns the users moved."""
        moved = 0
        while batch := self._engine.legacy_users(256):
            for payload in batch:
                user_id = str(payload.get(USER_ID_FIELD, ""))
                derive = EventIdDeriver()
                events = [
                    replace(e, event_id=derive(user_id, e.item_id, e.event_type, e.timestamp, e.recommendation_id))
                    for e in events_from_payload(payload.get("events"))
                ]
                if events:
                    self._engine.insert_events(
                        [(event_point_id(user_id, e.event_id), event_payload(user_id, e)) for e in events]
                    )
                if self._refresh_user(user_id) is None:
                    self._write_tombstone(user_id)
                moved += 1
        if moved:
            offset: Any = None
            while True:
                ids, offset = self._engine.item_ids(offset, 512)
                self.refresh_popularity(ids)
                if offset is None:
                    break
            log.info("moved users into the event log", users=moved)
        return moved
