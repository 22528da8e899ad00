"""The Python client (recsys_client) against the five real services: typed results, the recommendation options,
paging, writes, typed errors with the server's message and the request id, the asyncio flavour, and the
operators' reads from the retriever."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
import numpy as np
import pytest

from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from recsys_client import (
    AsyncOperatorClient,
    AsyncRecsysClient,
    Boost,
    CatalogItem,
    Event,
    Filter,
    InvalidArgumentError,
    NotFoundError,
    Pin,
    RecordResult,
    RecsysClient,
)
from tests.conftest import REPO_ROOT
from tests.integration.conftest import RunningSuite

ABRASIVES = "Abrasive & Finishing Products"
SANDING_ROLL = "B0000223SI"
SANDPAPER = "B00002N6FE"


@pytest.fixture(scope="module")
def client(suite: RunningSuite) -> Iterator[RecsysClient]:
    with RecsysClient(suite.address("gateway")) as client:
        yield client


def _user_with_history(suite: RunningSuite) -> str:
    sequences = suite.dataset.sequences()
    return max(sequences, key=lambda user: (len(sequences[user]), user))


def test_recommend_returns_typed_items_with_reasons_and_explanations(client: RecsysClient, suite: RunningSuite) -> None:
    result = client.recommend(_user_with_history(suite), k=10, explain=True)
    assert len(result.items) == 10
    assert result.strategy.startswith("personalised") and result.model_version
    assert result.recommendation_id and result.page == 1 and result.stage_ms["total"] > 0
    for item in result.items:
        assert item.title and item.reason and isinstance(item.categories, tuple)
        assert item.explanation is not None and "final" in item.explanation.stage_scores
    second = client.recommend(_user_with_history(suite), k=10, explain=True, page_token=result.next_page_token)
    assert second.page == 2 and second.recommendation_id == result.recommendation_id
    assert not {i.item_id for i in result.items} & {i.item_id for i in second.items}


def test_session_filter_rules_and_catalog_options_reach_the_gateway(client: RecsysClient, suite: RunningSuite) -> None:
    session = client.recommend(context_item_ids=[SANDING_ROLL, SANDPAPER], k=10)
    assert session.strategy == "session"
    assert not {SANDING_ROLL, SANDPAPER} & {item.item_id for item in session.items}
    filtered = client.recommend(query="glue", k=5, filter=Filter(categories_any=[ABRASIVES]))
    assert filtered.items and all(ABRASIVES in item.categories for item in filtered.items)
    pinned_id = suite.dataset.items[0].item_id
    three_m = {item.item_id for item in suite.dataset.items if item.brand == "3M"}
    ruled = client.recommend(
        context_item_ids=[SANDING_ROLL],
        k=5,
        pins=[Pin(pinned_id, 1)],
        boosts=[Boost(weight=2.0, category=ABRASIVES)],
        diversity=0.5,
        max_per_category=3,
    )
    assert ruled.items[0].item_id == pinned_id and ruled.items[0].pinned
    blocked = session.items[0].item_id
    without = client.recommend(context_item_ids=[SANDING_ROLL, SANDPAPER], k=10, blocked_item_ids=[blocked])
    assert blocked not in {item.item_id for item in without.items}
    branded = client.search("sandpaper", k=5, filter=Filter(keywords={"brand": ["3M"]}))
    assert branded.items and not branded.degraded
    assert all(item.item_id in three_m for item in branded.items)


def test_similar_items_and_search(client: RecsysClient) -> None:
    similar = client.similar_items(SANDING_ROLL, k=5)
    assert len(similar.items) == 5 and SANDING_ROLL not in {item.item_id for item in similar.items}
    assert similar.warnings == ()
    found = client.search("sanding sponge", k=5)
    assert len(found.items) == 5 and found.items[0].score >= found.items[-1].score


def test_the_gateways_warnings_reach_the_results(client: RecsysClient) -> None:
    nowhere = Filter(categories_any=["No such category"])
    for result in (
        client.recommend(query="glue", k=5, filter=nowhere),
        client.similar_items(SANDING_ROLL, k=5, filter=nowhere),
        client.search("glue", k=5, filter=nowhere),
    ):
        assert not result.items
        assert len(result.warnings) == 1 and result.warnings[0].startswith("filter.categories_any left no item")


def test_writes_then_delete_user(client: RecsysClient) -> None:
    catalog = f"client-{uuid.uuid4().hex[:8]}"
    written = client.upsert_items(
        [
            CatalogItem("c-1", "Waterproof wood glue", categories=["Adhesives"], attributes={"brand": "Acme"}),
            CatalogItem("c-2", "Sanding sponge, fine grit", categories=["Abrasives"], attributes={"price": 3.5}),
        ],
        catalog=catalog,
    )
    assert written.upserted == 2
    user = "client-user"
    when = datetime(2026, 11, 28, 10, tzinfo=UTC)
    recorded = client.record_events([Event(user, "c-1", "purchase", time=when)], catalog=catalog)
    assert recorded == RecordResult(recorded=1, unknown_recommendation_ids=())
    result = client.recommend(user, k=1, catalog=catalog)
    assert [item.item_id for item in result.items] == ["c-2"], "the purchased item is seen and left out"
    attributed = Event(user, "c-2", "click", time=when, recommendation_id=result.recommendation_id)
    stray = Event(user, "c-2", "view", time=when, recommendation_id="never-issued")
    recorded = client.record_events([attributed, stray], catalog=catalog)
    assert recorded == RecordResult(recorded=2, unknown_recommendation_ids=("never-issued",))
    client.delete_user(user, catalog=catalog)
    with pytest.raises(NotFoundError) as raised:
        client.delete_user(user, catalog=catalog)
    assert raised.value.code == grpc.StatusCode.NOT_FOUND


def test_errors_carry_the_status_the_message_and_the_request_id(client: RecsysClient) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        client.recommend("u1", k=0, request_id="client-test-1")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "k is 0" in raised.value.message
    assert raised.value.request_id == "client-test-1"
    with pytest.raises(NotFoundError):
        client.similar_items("no-such-item")
    with pytest.raises(ValueError, match="event type"):
        client.record_events([Event("u1", SANDING_ROLL, "like")])  # type: ignore[arg-type]


async def test_the_asyncio_client(suite: RunningSuite) -> None:
    async with AsyncRecsysClient(suite.address("gateway"), deadline=30) as client:
        result = await client.recommend(_user_with_history(suite), k=10)
        assert len(result.items) == 10
        assert len((await client.similar_items(SANDING_ROLL, k=3)).items) == 3
        assert (await client.search("glue", k=3)).items
        with pytest.raises(InvalidArgumentError):
            await client.search("", k=3)


async def test_operator_reads(suite: RunningSuite) -> None:
    user = _user_with_history(suite)
    async with AsyncOperatorClient(suite.address("retriever"), ranker_address=suite.address("ranker")) as operator:
        history = await operator.user_history(user)
        assert len(history.events) == len(suite.dataset.sequences()[user])
        items = await operator.items([SANDING_ROLL, "no-such-item"])
        assert list(items) == [SANDING_ROLL] and items[SANDING_ROLL].payload["title"]
        assert items[SANDING_ROLL].vector is None, "vectors only when asked for"
        vector = (await operator.items([SANDING_ROLL], with_vectors=True))[SANDING_ROLL].vector
        assert vector is not None and vector.dtype == np.float32 and vector.shape == (384,)
        # The stored vector itself: scored against the item it scores cosine 1, and the retriever's packed
        # search (vector_f32, little-endian float32) sends the same values back.
        async with grpc.aio.insecure_channel(suite.address("retriever")) as channel:
            query = retriever_pb2.SearchQuery(
                vector=vector.tolist(), limit=1, with_vectors=True, only_ids=[SANDING_ROLL], packed=True
            )
            search = retriever_pb2_grpc.RetrieverServiceStub(channel).SearchItems
            found = (await search(retriever_pb2.SearchItemsRequest(queries=[query]), timeout=30)).results[0].items[0]
        assert found.item_id == SANDING_ROLL and found.score == pytest.approx(1.0, abs=1e-5)
        assert np.array_equal(np.frombuffer(found.vector_f32, dtype="<f4"), vector)
        status = await operator.index_status()
        assert status.items >= 400 and status.dimension == 384
        assert status.unindexed_vectors == status.items - status.indexed_vectors
        assert await operator.health(suite.address("gateway"), "recsys.gateway.v1.GatewayService") == "SERVING"
        model = await operator.model_info()
        assert model is not None and model.version in model.available_versions
        neighbours = await operator.graph_neighbours(SANDING_ROLL, limit=5)
        assert neighbours is not None and len(neighbours) <= 5 and SANDING_ROLL not in {n.item_id for n in neighbours}
        assert [n.score for n in neighbours] == sorted((n.score for n in neighbours), reverse=True)


def test_the_readme_example_runs(suite: RunningSuite, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("```python\nfrom recsys_client import")
    example = readme[start + len("```python\n") : readme.index("```\n", start + 10)]
    namespace: dict[str, object] = {}
    exec(example.replace("localhost:50050", suite.address("gateway")), namespace)
    assert len(capsys.readouterr().out.splitlines()) == 10
    assert not {i.item_id for i in namespace["page"].items} & {i.item_id for i in namespace["more"].items}  # type: ignore[attr-defined]
