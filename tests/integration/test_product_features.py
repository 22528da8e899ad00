"""Product features through the gateway with the five real services on real Amazon-Scientific items:
anonymous sessions, diversity and the category cap, boosts, pins and blocks, attribution and paging,
rotation, explanations, A/B experiments with their report, and catalogs kept apart."""

from __future__ import annotations

import uuid
from collections import Counter

import grpc
import pytest

from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from services.cli.experiments import run_report
from tests.integration.conftest import EXPERIMENT_CATALOG, RunningSuite

ABRASIVES = "Abrasive & Finishing Products"
ADHESIVES = "Tapes, Adhesives & Sealants"
FASTENERS = "Fasteners"
SANDING_ROLL = "B0000223SI"  # PORTER-CABLE 4 1/2-Inch x 10yd 80 Grit sanding roll
SANDPAPER = "B00002N6FE"  # 3M Garnet Sandpaper, 9-Inch by 11-Inch


@pytest.fixture(scope="module")
def gateway(gateway_channel: grpc.Channel) -> gateway_pb2_grpc.GatewayServiceStub:
    return gateway_pb2_grpc.GatewayServiceStub(gateway_channel)


def _user() -> str:
    return f"feature-user-{uuid.uuid4().hex[:8]}"


def _items_in(suite: RunningSuite, category: str) -> list[str]:
    return [item.item_id for item in suite.dataset.items if category in item.categories]


def _departments(response: pb.RecommendResponse) -> set[str]:
    return {item.categories[0] for item in response.items if item.categories}


def _invalid(gateway: gateway_pb2_grpc.GatewayServiceStub, request: pb.RecommendRequest) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        gateway.Recommend(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return str(raised.value.details())


def test_an_anonymous_cart_of_two_sanding_products_yields_abrasives(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    response = gateway.Recommend(pb.RecommendRequest(context_item_ids=[SANDING_ROLL, SANDPAPER], k=10))
    assert response.strategy == "session" and response.model_version, "the ranker took the cart as history"
    assert sum(ABRASIVES in item.categories for item in response.items) >= 6, [i.title for i in response.items]
    assert not {SANDING_ROLL, SANDPAPER} & {item.item_id for item in response.items}
    assert any(item.reason.endswith("in this session") for item in response.items)
    steered = gateway.Recommend(pb.RecommendRequest(context_item_ids=[SANDING_ROLL], query="sanding sponge", k=5))
    assert steered.strategy == "session+query"


def test_diversity_spreads_the_page_over_departments_within_the_filter(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    focused = gateway.Recommend(pb.RecommendRequest(query="collated framing nails for a nail gun", k=10))
    diverse = gateway.Recommend(pb.RecommendRequest(query="collated framing nails for a nail gun", k=10, diversity=1.0))
    assert _departments(focused) == {FASTENERS}, [list(i.categories) for i in focused.items]
    assert len(_departments(diverse)) >= 3, [list(i.categories) for i in diverse.items]
    within = gateway.Recommend(
        pb.RecommendRequest(
            query="collated framing nails", k=10, diversity=1.0, filter=pb.Filter(categories_any=[FASTENERS])
        )
    )
    assert len(within.items) == 10 and _departments(within) == {FASTENERS}
    capped = gateway.Recommend(pb.RecommendRequest(query="collated framing nails", k=10, max_per_category=2))
    leaves = Counter(item.categories[-1] for item in capped.items)
    assert len(capped.items) == 10 and max(leaves.values()) <= 2, leaves


def test_a_boosted_category_rises_and_says_so(
    suite: RunningSuite, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    user = _user()
    gateway.RecordEvents(
        pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=i) for i in _items_in(suite, ABRASIVES)[:3]])
    )
    plain = gateway.Recommend(pb.RecommendRequest(user_id=user, k=10))
    boosted = gateway.Recommend(
        pb.RecommendRequest(user_id=user, k=10, boosts=[pb.Boost(category=ADHESIVES, weight=3.0)])
    )

    def adhesives(response: pb.RecommendResponse) -> int:
        return sum(ADHESIVES in item.categories for item in response.items)

    assert adhesives(boosted) > adhesives(plain), (adhesives(plain), adhesives(boosted))
    lifted = [item for item in boosted.items if ADHESIVES in item.categories]
    assert all("boosted for category “Tapes, Adhesives & Sealants”" in item.reason for item in lifted)
    buried = gateway.Recommend(
        pb.RecommendRequest(user_id=user, k=10, boosts=[pb.Boost(field="brand", value="3M", weight=-10.0)])
    )
    brands = {item.item_id: item.brand for item in suite.dataset.items}
    assert sum(brands.get(i.item_id) == "3M" for i in buried.items) <= sum(
        brands.get(i.item_id) == "3M" for i in plain.items
    )


def test_pins_take_their_position_and_blocked_items_never_show(
    suite: RunningSuite, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    user = _user()
    gateway.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=SANDING_ROLL)]))
    plain = gateway.Recommend(pb.RecommendRequest(user_id=user, k=10))
    pinned_item = _items_in(suite, ADHESIVES)[0]
    blocked = [plain.items[0].item_id, plain.items[1].item_id]
    ruled = gateway.Recommend(
        pb.RecommendRequest(
            user_id=user, k=10, pins=[pb.Pin(item_id=pinned_item, position=3)], blocked_item_ids=blocked
        )
    )
    assert ruled.items[2].item_id == pinned_item and ruled.items[2].pinned
    assert ruled.items[2].reason == "Featured at position 3"
    assert not set(blocked) & {item.item_id for item in ruled.items}
    assert len(ruled.items) == 10 and sum(item.pinned for item in ruled.items) == 1
    assert "both pinned and blocked" in _invalid(
        gateway,
        pb.RecommendRequest(
            user_id=user, k=5, pins=[pb.Pin(item_id=pinned_item, position=1)], blocked_item_ids=[pinned_item]
        ),
    )
    assert "position" in _invalid(gateway, pb.RecommendRequest(k=5, pins=[pb.Pin(item_id=pinned_item, position=9)]))
    assert "diversity" in _invalid(gateway, pb.RecommendRequest(k=5, diversity=2.0))
    with pytest.raises(grpc.RpcError) as unknown:
        gateway.Recommend(pb.RecommendRequest(k=5, pins=[pb.Pin(item_id="no-such-item", position=1)]))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_pages_of_a_recommendation_never_repeat_even_after_events(
    suite: RunningSuite, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    user = _user()
    adhesives = _items_in(suite, ADHESIVES)
    gateway.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=i) for i in adhesives[:2]]))
    first = gateway.Recommend(pb.RecommendRequest(user_id=user, k=7))
    # The user acts between pages: the profile moves, the pages still never repeat.
    gateway.RecordEvents(
        pb.RecordEventsRequest(
            events=[pb.Event(user_id=user, item_id=SANDING_ROLL, recommendation_id=first.recommendation_id)]
        )
    )
    shown = [item.item_id for item in first.items]
    token = first.next_page_token
    for page in (2, 3):
        response = gateway.Recommend(pb.RecommendRequest(user_id=user, k=7, page_token=token))
        assert response.recommendation_id == first.recommendation_id and response.page == page
        shown += [item.item_id for item in response.items]
        token = response.next_page_token
    assert len(shown) == len(set(shown)) == 21
    fresh = gateway.Recommend(pb.RecommendRequest(user_id=user, k=7))
    assert fresh.recommendation_id != first.recommendation_id and fresh.page == 1


def test_items_shown_again_and_again_without_a_click_rotate_down(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    user = _user()
    first = [item.item_id for item in gateway.Recommend(pb.RecommendRequest(user_id=user, k=3)).items]
    later = first
    for _ in range(6):
        later = [item.item_id for item in gateway.Recommend(pb.RecommendRequest(user_id=user, k=3)).items]
    assert later != first, "after several showings without a response the page changes"
    other = [item.item_id for item in gateway.Recommend(pb.RecommendRequest(user_id=_user(), k=3)).items]
    assert other == first, "another user's showings do not rotate this user's page"


def test_explanations_name_the_evidence_and_the_stage_scores(
    suite: RunningSuite, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    user = _user()
    gateway.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=SANDING_ROLL)]))
    response = gateway.Recommend(pb.RecommendRequest(user_id=user, k=5, query="sanding", explain=True))
    for item in response.items:
        stages = item.explanation.stage_scores
        assert {"retrieval", "ranker", "base", "final"} <= set(stages), dict(stages)
        # The query, the seen roll when truly similar, or no single strong piece of evidence ("Near your search").
        assert item.explanation.evidence in {SANDING_ROLL, "query", ""}
        assert item.reason.startswith(("Similar to “", "Matches your search “", "Near your search “"))
    assert any(item.explanation.evidence == "query" for item in response.items)
    quiet = gateway.Recommend(pb.RecommendRequest(user_id=user, k=5))
    assert not quiet.items[0].HasField("explanation")
    # "record" appears only when the impression queue was full: pages are recorded after the answer.
    assert {"profile", "retrieval", "ranker", "total"} <= set(quiet.stage_ms), dict(quiet.stage_ms)
    popular = gateway.Recommend(pb.RecommendRequest(k=3, explain=True))
    assert popular.items[0].explanation.evidence == "popularity" and popular.items[0].reason.startswith("Popular")


def _load_catalog(suite: RunningSuite, gateway: gateway_pb2_grpc.GatewayServiceStub, catalog: str, count: int) -> None:
    items = [
        pb.CatalogItem(item_id=item.item_id, title=item.title, categories=list(item.categories))
        for item in suite.dataset.items[:count]
    ]
    gateway.UpsertItems(pb.UpsertItemsRequest(items=items, catalog=catalog))


def test_arms_split_users_and_the_report_matches_a_hand_count(
    suite: RunningSuite, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    _load_catalog(suite, gateway, EXPERIMENT_CATALOG, 60)
    counts: dict[str, Counter[str]] = {}
    users: dict[str, set[str]] = {}
    for n in range(60):
        user = f"ab-user-{n}"
        response = gateway.Recommend(pb.RecommendRequest(user_id=user, k=5, catalog=EXPERIMENT_CATALOG))
        assert response.experiment == "diversity-trial" and response.arm in {"control", "diverse"}
        again = gateway.Recommend(pb.RecommendRequest(user_id=user, k=5, catalog=EXPERIMENT_CATALOG))
        assert again.arm == response.arm, "a user keeps the arm"
        tally = counts.setdefault(response.arm, Counter())
        users.setdefault(response.arm, set()).add(user)
        tally["impressions"] += 2
        # Every third user clicks the first item; every sixth also buys it.
        if n % 3 == 0:
            kind = pb.EVENT_TYPE_PURCHASE if n % 6 == 0 else pb.EVENT_TYPE_CLICK
            event = pb.Event(
                user_id=user, item_id=response.items[0].item_id, type=kind, recommendation_id=response.recommendation_id
            )
            gateway.RecordEvents(pb.RecordEventsRequest(events=[event], catalog=EXPERIMENT_CATALOG))
            tally["engaged"] += 1
            tally["converted"] += n % 6 == 0
    assert set(counts) == {"control", "diverse"}
    rows = run_report(suite.address("retriever"), "diversity-trial", EXPERIMENT_CATALOG, None, None)
    assert rows[0].arm == "control"
    for row in rows:
        expected = counts[row.arm]
        assert (row.impressions, row.engaged, row.converted) == (
            expected["impressions"],
            expected["engaged"],
            expected["converted"],
        )
        assert row.users == len(users[row.arm])
        assert row.click_through_ci.low <= row.click_through <= row.click_through_ci.high


def test_catalogs_never_leak_into_each_other(suite: RunningSuite, gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    catalog = f"articles-{uuid.uuid4().hex[:6]}"
    gateway.UpsertItems(
        pb.UpsertItemsRequest(
            catalog=catalog,
            items=[
                pb.CatalogItem(item_id=SANDING_ROLL, title="How to glue a chair leg", categories=["howto"]),
                pb.CatalogItem(item_id="article-2", title="Choosing wood glue for furniture", categories=["howto"]),
            ],
        )
    )
    found = gateway.SearchItems(pb.SearchItemsRequest(query="glue", k=10, catalog=catalog))
    assert {item.item_id for item in found.items} == {SANDING_ROLL, "article-2"}
    assert next(i for i in found.items if i.item_id == SANDING_ROLL).title == "How to glue a chair leg"
    default = gateway.SearchItems(pb.SearchItemsRequest(query="glue", k=50))
    assert "article-2" not in {item.item_id for item in default.items}
    assert all(item.title != "How to glue a chair leg" for item in default.items)

    user = _user()
    gateway.RecordEvents(pb.RecordEventsRequest(catalog=catalog, events=[pb.Event(user_id=user, item_id="article-2")]))
    in_catalog = gateway.Recommend(pb.RecommendRequest(user_id=user, k=5, catalog=catalog))
    assert in_catalog.strategy == "personalised" and [i.item_id for i in in_catalog.items] == [SANDING_ROLL]
    assert in_catalog.model_version == "" and not in_catalog.degraded, "no model for this catalog: retrieval order"
    assert gateway.Recommend(pb.RecommendRequest(user_id=user, k=5)).strategy == "popular"
    with pytest.raises(grpc.RpcError) as unknown:
        gateway.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id="article-2")]))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    gateway.DeleteUser(pb.DeleteUserRequest(user_id=user, catalog=catalog))
    assert gateway.Recommend(pb.RecommendRequest(user_id=user, k=5, catalog=catalog)).strategy == "popular"
    assert "catalog" in _invalid(gateway, pb.RecommendRequest(k=5, catalog="Not A Name"))
