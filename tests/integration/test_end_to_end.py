"""The five real services together (real model, embedded Qdrant, trained ranker) on real catalog data."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import struct_pb2

from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from tests.integration.conftest import RunningSuite

ABRASIVES = "Abrasive & Finishing Products"
ADHESIVES = "Tapes, Adhesives & Sealants"


@pytest.fixture(scope="module")
def gateway(gateway_channel: grpc.Channel) -> gateway_pb2_grpc.GatewayServiceStub:
    return gateway_pb2_grpc.GatewayServiceStub(gateway_channel)


def _new_user() -> str:
    return f"test-user-{uuid.uuid4().hex[:8]}"


def _items_in(suite: RunningSuite, category: str) -> list[str]:
    return [item.item_id for item in suite.dataset.items if category in item.categories]


def test_the_run_command_printed_a_sample_recommendation(suite: RunningSuite) -> None:
    text = "\n".join(suite.output)
    assert "all five services report SERVING" in text
    assert "Sample recommendation for user" in text and "recommended:" in text


def test_every_service_runs_on_uvloop(suite: RunningSuite) -> None:
    for service in ("preprocessor", "embedding", "retriever", "ranker", "gateway"):
        log = (suite.state_dir / "logs" / f"{service}.log").read_text(errors="replace")
        listening = [line for line in log.splitlines() if '"listening"' in line]
        assert listening and all('"event_loop": "uvloop"' in line for line in listening), listening


def test_a_sanding_user_gets_abrasives_and_never_seen_items(
    suite: RunningSuite, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    user = _new_user()
    seen = _items_in(suite, ABRASIVES)[:3]
    gateway.RecordEvents(
        pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=item, type=pb.EVENT_TYPE_VIEW) for item in seen])
    )
    response = gateway.Recommend(pb.RecommendRequest(user_id=user, k=10))
    assert response.strategy == "personalised"
    assert response.model_version, "the ranker took part"
    assert len(response.items) == 10
    abrasive = [item for item in response.items if ABRASIVES in item.categories]
    assert len(abrasive) >= 6, [(i.title, list(i.categories)) for i in response.items]
    assert not {item.item_id for item in response.items} & set(seen)
    # A reason names a seen item only when it is truly similar (the catalog's top 5% of pairwise cosines).
    assert any(item.reason.startswith("Similar to “") for item in abrasive)
    honest = ("Similar to “", "Ranked for your history as a whole", "Often chosen by people with a history like yours")
    assert all(item.reason.startswith(honest) for item in abrasive), [i.reason for i in abrasive]


def test_the_next_recommendation_reflects_new_events(
    suite: RunningSuite, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    user = _new_user()
    before = gateway.Recommend(pb.RecommendRequest(user_id=user, k=10))
    assert before.strategy == "popular"
    glue = _items_in(suite, ADHESIVES)[:2]
    gateway.RecordEvents(
        pb.RecordEventsRequest(
            events=[pb.Event(user_id=user, item_id=item, type=pb.EVENT_TYPE_PURCHASE) for item in glue]
        )
    )
    after = gateway.Recommend(pb.RecommendRequest(user_id=user, k=10))
    assert after.strategy == "personalised"
    assert sum(ADHESIVES in item.categories for item in after.items) >= 6


def test_category_filter_holds(suite: RunningSuite, gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    user = _new_user()
    gateway.RecordEvents(
        pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=_items_in(suite, ABRASIVES)[0])])
    )
    response = gateway.Recommend(pb.RecommendRequest(user_id=user, k=10, filter=pb.Filter(categories_any=[ADHESIVES])))
    assert response.items
    assert all(ADHESIVES in item.categories for item in response.items)


def test_pages_do_not_repeat(suite: RunningSuite, gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    user = _new_user()
    gateway.RecordEvents(
        pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=i) for i in _items_in(suite, ADHESIVES)[:2]])
    )
    shown: list[str] = []
    token = ""
    for _ in range(3):
        page = gateway.Recommend(pb.RecommendRequest(user_id=user, k=7, page_token=token))
        shown += [item.item_id for item in page.items]
        token = page.next_page_token
        assert token
    assert len(shown) == len(set(shown)) == 21


def test_popular_pages_do_not_repeat(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    user = _new_user()
    first = gateway.Recommend(pb.RecommendRequest(user_id=user, k=5))
    second = gateway.Recommend(pb.RecommendRequest(user_id=user, k=5, page_token=first.next_page_token))
    assert first.strategy == second.strategy == "popular"
    assert not {i.item_id for i in first.items} & {i.item_id for i in second.items}
    for page in (first, second):  # scores compare within one response
        scores = [i.score for i in page.items]
        assert scores == sorted(scores, reverse=True)


def test_search_puts_glues_on_top(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    response = gateway.SearchItems(pb.SearchItemsRequest(query="waterproof glue", k=5))
    titles = [item.title.lower() for item in response.items]
    assert "glue" in titles[0]
    assert sum("glue" in title for title in titles[:3]) >= 2, titles


def test_an_upserted_item_is_similar_to_its_twin_at_once(
    suite: RunningSuite, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    original = next(item for item in suite.dataset.items if item.item_id == "B0000223UV")
    twin_id = f"twin-{uuid.uuid4().hex[:8]}"
    attributes = struct_pb2.Struct()
    attributes.update({"brand": original.brand, "price": 7.99, "in_stock": True})
    response = gateway.UpsertItems(
        pb.UpsertItemsRequest(
            items=[
                pb.CatalogItem(
                    item_id=twin_id,
                    title=original.title + " (2-pack)",
                    categories=list(original.categories),
                    attributes=attributes,
                )
            ]
        )
    )
    assert response.upserted == 1
    similar = gateway.GetSimilarItems(pb.GetSimilarItemsRequest(item_id=original.item_id, k=5))
    assert twin_id in [item.item_id for item in similar.items[:3]]
    priced = gateway.SearchItems(
        pb.SearchItemsRequest(
            query="gorilla glue", k=5, filter=pb.Filter(ranges=[pb.RangeFilter(field="price", gte=5, lte=10)])
        )
    )
    assert [item.item_id for item in priced.items] == [twin_id]


def test_delete_user_forgets_the_user(suite: RunningSuite, gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    user = _new_user()
    gateway.RecordEvents(
        pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=_items_in(suite, ABRASIVES)[0])])
    )
    assert gateway.Recommend(pb.RecommendRequest(user_id=user, k=3)).strategy == "personalised"
    gateway.DeleteUser(pb.DeleteUserRequest(user_id=user))
    with pytest.raises(grpc.RpcError) as caught:
        gateway.DeleteUser(pb.DeleteUserRequest(user_id=user))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert gateway.Recommend(pb.RecommendRequest(user_id=user, k=3)).strategy == "popular"
