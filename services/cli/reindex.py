"""`recsys reindex`: moves a catalog to another encoder without a moment of mixed or missing vectors.

The retriever keeps a second, staged copy of the catalog's items for the new encoder's vectors while the old
copy serves. This command fills it: every served item's text (kept beside its vector at ingest) is embedded
again by the embedding service with the new encoder and written into the staged copy. It then compares the two
copies and catches up whatever was upserted meanwhile, until they agree, and switches: one atomic step in the
retriever (an alias on a Qdrant server, a renamed record on the embedded engine), after which every search,
upsert and profile reads the new copy. The gateway stamps each request with the encoder it embedded with, the
retriever refuses vectors of the other, and the ranker scores with the newest model trained on the request's
encoder, so queries, items and model move together. The old copy stays staged (deletes and popularity reach it)
for a rollback, `recsys reindex --encoder OLD`, until `recsys reindex --drop OLD` deletes it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tqdm import tqdm

from recsys.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from recsys.preprocessor.v1 import preprocessor_pb2, preprocessor_pb2_grpc
from recsys.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.common.attributes import format_attribute_value
from services.common.encoders import encoder_label, encoder_token
from services.common.structs import dict_to_struct, struct_to_dict
from services.retriever.store import STAGED_BEHIND_FIELD, item_content

PAGE_SIZE = 1000
# Rounds of compare-and-catch-up before giving up on a catalog that keeps changing faster than it is embedded.
MAX_ROUNDS = 10
# Payload fields the preprocessor reads when an item was stored without its text (written before texts were kept).
TEXT_FIELDS = ("title", "description", "categories", "brand")


class ReindexError(RuntimeError):
    """The reindex cannot go on; the message says what to do. The served copy is untouched."""


@dataclass(frozen=True)
class StoredCopy:
    """One item as a copy holds it: the payload (without what the store keeps per copy) and its text."""

    payload: Mapping[str, Any]
    text: str


@dataclass
class RoundReport:
    compared: int = 0
    embedded: int = 0
    removed: int = 0
    texts_rebuilt: int = 0


@dataclass(frozen=True)
class ReindexReport:
    catalog: str
    encoder: str
    previous: str
    items: int
    rounds: list[RoundReport]
    switched: bool
    seconds: float


def _stored(item: retriever_pb2.Item, text: str) -> tuple[StoredCopy, bool]:
    """The item's copy and whether the served copy marks it as written after the staged one took it."""
    payload = struct_to_dict(item.payload)
    return StoredCopy(item_content(payload), text), bool(payload.get(STAGED_BEHIND_FIELD))


class Reindexer:
    """The steps of one reindex over synchronous channels to the four services; each step is safe to repeat."""

    def __init__(
        self,
        channels: Mapping[str, grpc.Channel],
        catalog: str,
        encoder: str,
        *,
        batch: int = 64,
        token: str = "",
        say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    ) -> None:
        self._retriever = retriever_pb2_grpc.RetrieverServiceStub(channels["retriever"])
        self._embedding = embedding_pb2_grpc.EmbeddingServiceStub(channels["embedding"])
        self._ranker = ranker_pb2_grpc.RankerServiceStub(channels["ranker"])
        self._preprocessor = preprocessor_pb2_grpc.PreprocessorServiceStub(channels["preprocessor"])
        self._catalog = catalog
        self._encoder = encoder
        self._batch = batch
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._say = say

    def _call(self, method: Callable[..., Any], request: Any, timeout_s: float = 120.0) -> Any:
        return method(request, timeout=timeout_s, metadata=self._metadata)

    # -- the steps -----------------------------------------------------------------------------------------

    def encoders(self) -> retriever_pb2.EncoderState:
        request = retriever_pb2.GetCollectionInfoRequest(catalog=self._catalog)
        response: retriever_pb2.GetCollectionInfoResponse = self._call(self._retriever.GetCollectionInfo, request)
        return response.encoders

    def preflight(self) -> None:
        """The embedding service can embed with the encoder and the ranker has a model trained on it: checked
        before anything is written, so a reindex never switches to vectors nothing can score."""
        if self._encoder:
            info = self._call(self._embedding.GetModelInfo, embedding_pb2.GetModelInfoRequest())
            if self._encoder not in info.available_encoder_versions:
                available = ", ".join(info.available_encoder_versions) or "none"
                raise ReindexError(
                    f"the embedding service has no encoder {self._encoder} (available: {available}): set its "
                    "EMBEDDING_ENCODER_DIR to the folder `recsys train` wrote it in (STATE_DIR/checkpoints/encoders)"
                )
        request = ranker_pb2.GetModelInfoRequest(catalog=self._catalog, encoder_version=self._encoder)
        try:
            model = self._call(self._ranker.GetModelInfo, request)
        except grpc.RpcError as error:
            raise ReindexError(
                f"the ranker cannot score {encoder_label(self._encoder)}'s vectors: {error.details()}"
            ) from None
        self._say(f"the ranker will score with model {model.version}, trained on {encoder_label(self._encoder)}")

    def stage(self) -> retriever_pb2.EncoderState:
        request = retriever_pb2.StageEncoderRequest(catalog=self._catalog, encoder_version=self._encoder)
        response: retriever_pb2.StageEncoderResponse = self._call(self._retriever.StageEncoder, request)
        return response.encoders

    def _pages(self, encoder: str | None) -> Iterator[tuple[str, StoredCopy, bool]]:
        token = ""
        while True:
            request = retriever_pb2.ListItemsRequest(catalog=self._catalog, limit=PAGE_SIZE, page_token=token)
            if encoder is not None:
                request.encoder_version = encoder
            response = self._call(self._retriever.ListItems, request)
            for item, text in zip(response.items, response.texts, strict=True):
                yield item.item_id, *_stored(item, text)
            token = response.next_page_token
            if not token:
                return

    def catch_up(self, total: int) -> RoundReport:
        """One round: embeds every served item the staged copy lacks or holds differently, and removes what the
        staged copy holds that no longer serves."""
        report = RoundReport()
        staged = {item_id: copy for item_id, copy, _ in self._pages(self._encoder)}
        pending: list[tuple[str, StoredCopy]] = []
        with tqdm(total=total, desc=f"reindex into {encoder_label(self._encoder)}", unit="item") as bar:
            for item_id, served, ahead in self._pages(None):
                report.compared += 1
                if staged.pop(item_id, None) != served or ahead:
                    pending.append((item_id, served))
                if len(pending) >= self._batch:
                    report.texts_rebuilt += self._write(pending)
                    report.embedded += len(pending)
                    pending = []
                bar.update(1)
            if pending:
                report.texts_rebuilt += self._write(pending)
                report.embedded += len(pending)
        if staged:
            # Deleted from the served copy after this round read the staged one: a delete reaches both copies.
            removed = list(staged)
            for start in range(0, len(removed), PAGE_SIZE):
                chunk = removed[start : start + PAGE_SIZE]
                self._call(
                    self._retriever.DeleteItems, retriever_pb2.DeleteItemsRequest(catalog=self._catalog, item_ids=chunk)
                )
            report.removed = len(removed)
        return report

    def _write(self, items: Sequence[tuple[str, StoredCopy]]) -> int:
        """Embeds the items' texts with the new encoder and writes them into the staged copy; returns how many
        texts had to be built again from the stored fields."""
        texts = [copy.text for _, copy in items]
        missing = [i for i, text in enumerate(texts) if not text]
        if missing:
            for index, text in zip(missing, self._build_texts([items[i] for i in missing]), strict=True):
                texts[index] = text
        request = embedding_pb2.EmbedTextsRequest(
            texts=texts, packed=True, encoder_version=encoder_token(self._encoder)
        )
        response = self._call(self._embedding.EmbedTexts, request)
        vectors = np.frombuffer(response.vectors_f32, dtype="<f4").reshape(len(texts), -1)
        upsert = retriever_pb2.UpsertItemsRequest(
            catalog=self._catalog,
            items=[
                retriever_pb2.Item(item_id=item_id, vector=vector.tolist(), payload=dict_to_struct(copy.payload))
                for (item_id, copy), vector in zip(items, vectors, strict=True)
            ],
            texts=texts,
            encoder_version=self._encoder,
            staged=True,
        )
        self._call(self._retriever.UpsertItems, upsert)
        return len(missing)

    def _build_texts(self, items: Sequence[tuple[str, StoredCopy]]) -> list[str]:
        """Texts of items stored without one, built by the preprocessor from the payload's fields as ingest
        builds them (a description that was never stored is not among them)."""
        fields = []
        for item_id, copy in items:
            payload = copy.payload
            attributes = {
                k: format_attribute_value(v) for k, v in payload.items() if k not in TEXT_FIELDS and v is not None
            }
            fields.append(
                preprocessor_pb2.ItemFields(
                    item_id=item_id,
                    title=str(payload.get("title", "")) or item_id,
                    description=str(payload.get("description", "")),
                    categories=[str(c) for c in payload.get("categories") or ()],
                    brand=str(payload.get("brand", "")),
                    attributes=attributes,
                )
            )
        response = self._call(self._preprocessor.BuildItemTexts, preprocessor_pb2.BuildItemTextsRequest(items=fields))
        return [str(i.text.text) for i in response.items]

    def switch(self, timeout_s: float) -> retriever_pb2.EncoderState | None:
        """Switches; None when the staged copy fell behind (catch up again). Waits while the embedded engine
        finishes an index build of the served copy."""
        deadline = time.monotonic() + timeout_s
        request = retriever_pb2.SwitchEncoderRequest(catalog=self._catalog, encoder_version=self._encoder)
        while True:
            try:
                response: retriever_pb2.SwitchEncoderResponse = self._call(self._retriever.SwitchEncoder, request)
                return response.encoders
            except grpc.RpcError as error:
                details = str(error.details())
                if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                if "index build" in details and time.monotonic() < deadline:
                    self._say("waiting for the retriever's index build to finish before switching ...")
                    time.sleep(2.0)
                    continue
                if "holds" in details:
                    return None
                raise ReindexError(details) from None

    def run(self, *, switch: bool = True, switch_timeout_s: float = 600.0) -> ReindexReport:
        """Preflight, stage, catch up until a round finds the copies agreeing, then switch (unless ``switch`` is
        False: the staged copy is left filled, for a later run to switch)."""
        started = time.monotonic()
        before = self.encoders()
        if before.serving == self._encoder:
            kept = f"; {encoder_label(before.staged)} is kept for rollback" if before.has_staged else ""
            raise ReindexError(f"{encoder_label(self._encoder)} serves already{kept}: nothing to do")
        self.preflight()
        self.stage()
        rounds: list[RoundReport] = []
        for _ in range(MAX_ROUNDS):
            served = self._call(
                self._retriever.GetCollectionInfo, retriever_pb2.GetCollectionInfoRequest(catalog=self._catalog)
            ).items
            report = self.catch_up(int(served))
            rounds.append(report)
            rebuilt = f", {report.texts_rebuilt} texts rebuilt from stored fields" if report.texts_rebuilt else ""
            self._say(
                f"round {len(rounds)}: {report.compared} items compared, {report.embedded} embedded, "
                f"{report.removed} removed{rebuilt}"
            )
            if report.embedded or report.removed:
                continue  # the copies differed: compare again, so the switch follows a round that found none
            switched = switch and self.switch(switch_timeout_s) is not None
            if switched or not switch:
                return ReindexReport(
                    self._catalog,
                    self._encoder,
                    before.serving,
                    report.compared,
                    rounds,
                    switched,
                    time.monotonic() - started,
                )
        raise ReindexError(
            f"the catalog kept changing for {MAX_ROUNDS} rounds; run `recsys reindex` again when writes slow down "
            "(the staged copy keeps what was embedded)"
        )

    def drop(self) -> retriever_pb2.EncoderState:
        request = retriever_pb2.DropStagedEncoderRequest(catalog=self._catalog, encoder_version=self._encoder)
        response: retriever_pb2.DropStagedEncoderResponse = self._call(self._retriever.DropStagedEncoder, request)
        return response.encoders
