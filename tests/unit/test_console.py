"""The console's pages over fake clients: untrusted item text is escaped, the token is asked for, the suite's
errors become HTTP statuses with the server's message. The real suite in a real browser is in
tests/integration/test_console_browser.py."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient

from recsys_client import Boost, Explanation, Filter, NotFoundError, Recommendations, RecommendedItem, SimilarItems
from recsys_client.operator import (
    GraphNeighbour,
    HistoryEvent,
    Impression,
    IndexStatus,
    ModelInfo,
    StoredItem,
    UserHistory,
)
from services.console.app import console_app, load_experiments
from services.console.views import Console
from services.gateway.experiments import Experiments

HOSTILE = '<script>document.title="pwned"</script>Glue & <b>bold</b>'


def _item(item_id: str, title: str, evidence: str = "x") -> RecommendedItem:
    explanation = Explanation({"final": 1.0}, evidence, "")
    return RecommendedItem(item_id, 0.5, f"because of <i>{item_id}</i>", title, ("Tools",), False, explanation)


class FakeGateway:
    def __init__(self) -> None:
        self.queries: list[str] = []

    async def recommend(
        self,
        user_id: str = "",
        *,
        k: int = 10,
        query: str = "",
        filter: Filter | None = None,
        exclude_seen: bool | None = None,
        catalog: str = "",
        context_item_ids: Sequence[str] = (),
        diversity: float = 0.0,
        boosts: Sequence[Boost] = (),
        explain: bool = False,
    ) -> Recommendations:
        self.queries.append(query)
        items = (_item("evil", HOSTILE), _item("g1", "Graph pick", "graph"))
        warnings = ("max_per_category had no effect: none of the 2 candidates has a category",)
        return Recommendations(items, "", "personalised", "v1", False, (), "r1", "", "", 1, {"total": 4.0}, warnings)

    async def similar_items(self, item_id: str, *, k: int = 10, catalog: str = "") -> SimilarItems:
        if item_id == "missing":
            raise NotFoundError(grpc.StatusCode.NOT_FOUND, "item 'missing' is not in the catalog", "rid-9")
        # A warning quotes the request's category, which is as untrusted as item text.
        return SimilarItems((_item("s1", HOSTILE),), (f"categories_any [{HOSTILE!r}] left no item",))


class FakeOperator:
    def __init__(self, without_ranker: bool = False) -> None:
        self.without_ranker = without_ranker

    async def health(self, address: str, service: str) -> str:
        return "SERVING"

    async def user_history(self, user_id: str, catalog: str = "") -> UserHistory:
        return UserHistory(user_id, (HistoryEvent("evil", "purchase", 1_764_320_000.0, ""),), {})

    async def items(self, item_ids: Sequence[str], catalog: str = "") -> dict[str, StoredItem]:
        return {i: StoredItem(i, {"title": HOSTILE, "brand": "<img src=x onerror=alert(1)>"}) for i in item_ids}

    async def index_status(self, catalog: str = "") -> IndexStatus:
        return IndexStatus("edge", 400, 40, 0, 384, False, ("brand", "price"))

    async def impressions(
        self, catalog: str = "", experiment: str = "", limit: int = 100_000
    ) -> AsyncIterator[Impression]:
        for arm, engaged in (("control", ()), ("diverse", ("evil",)), ("control", ("evil",))):
            yield Impression("r", 1, "u", ("evil",), "trial", arm, 0.0, engaged, ())

    async def model_info(self, catalog: str = "") -> ModelInfo | None:
        return ModelInfo("v1", "2026-12-01T00:00:00Z", "all-MiniLM-L6-v2", ("v1",))

    async def graph_neighbours(self, item_id: str, catalog: str = "", limit: int = 10) -> list[GraphNeighbour] | None:
        if catalog == "modelless":
            raise NotFoundError(grpc.StatusCode.NOT_FOUND, "no model for catalog 'modelless'", "rid-3")
        return None if self.without_ranker else [GraphNeighbour("n1", 0.25)]


def _client(token: str | None = None, without_ranker: bool = False) -> TestClient:
    @asynccontextmanager
    async def open_console() -> AsyncIterator[Console]:
        operator = FakeOperator(without_ranker)
        yield Console(FakeGateway(), operator, {"gateway": "g:1"}, ["articles"], Experiments(), 100)

    return TestClient(console_app(open_console, token))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with _client() as client:
        yield client


@pytest.mark.parametrize("path", ["/users/u1", "/items/evil", "/users/u1?q=%3Cscript%3E"])
def test_untrusted_text_is_escaped(client: TestClient, path: str) -> None:
    html = client.get(path).text
    assert "<script>" not in html and "<img src=x" not in html and "<i>evil</i>" not in html
    assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;Glue &amp; &lt;b&gt;bold&lt;/b&gt;" in html


def test_pages_render(client: TestClient) -> None:
    user = client.get("/users/u1?q=glue&diversity=0.5&boost_category=Tools&boost_weight=2")
    assert user.status_code == 200 and "personalised" in user.text and "purchase" in user.text
    assert '<p class="warning">max_per_category had no effect' in user.text
    item = client.get("/items/evil")
    assert "graph score 0.250" in item.text and 'id="graph"' in item.text
    assert '<p class="warning">categories_any [&#39;&lt;script&gt;' in item.text
    with _client(without_ranker=True) as without:
        assert "Graph pick" in without.get("/items/evil").text, "the gateway's graph-attributed items instead"
    assert "Graph pick" in client.get("/items/evil?catalog=modelless").text, "a catalog the ranker has no model for"
    suite = client.get("/suite")
    assert "SERVING" in suite.text and "articles" in suite.text and "exact search until built" in suite.text
    report = client.get("/experiments?name=trial")
    assert report.status_code == 200 and '<svg id="chart"' in report.text and "diverse" in report.text


def test_bad_options_and_suite_errors_become_statuses(client: TestClient) -> None:
    assert client.get("/users/u1?k=0").status_code == 422
    missing = client.get("/items/missing")
    assert missing.status_code == 404
    assert "item &#39;missing&#39; is not in the catalog" in missing.text and "rid-9" in missing.text


def test_the_token_is_asked_for() -> None:
    with _client(token="s3cret") as client:
        refused = client.get("/suite")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        assert client.get("/suite", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/suite", headers={"authorization": "Bearer s3cret"}).status_code == 200
        basic = base64.b64encode(b"operator:s3cret").decode()
        assert client.get("/suite", headers={"authorization": f"Basic {basic}"}).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_the_search_box_opens_a_page(client: TestClient) -> None:
    user = client.get("/", params={"user": "a b/c", "catalog": "articles"}, follow_redirects=False)
    assert user.status_code == 303 and user.headers["location"] == "/users/a%20b%2Fc?catalog=articles"
    assert client.get("/", params={"item": "evil"}, follow_redirects=False).headers["location"] == "/items/evil"
    assert client.get("/", follow_redirects=False).headers["location"] == "/suite"


def test_ids_with_slashes_have_pages(client: TestClient) -> None:
    assert "a b/c" in client.get("/users/a%20b%2Fc").text


def test_an_absent_experiments_file_reads_as_none_and_a_broken_one_fails(tmp_path: Path) -> None:
    # The Kubernetes component mounts the file from an optional ConfigMap: absent where no experiment runs.
    assert load_experiments(tmp_path / "experiments.json").for_catalog("") is None
    written = tmp_path / "written.json"
    arms = [{"name": "control", "weight": 1}, {"name": "diverse", "weight": 1}]
    written.write_text(json.dumps({"experiments": [{"name": "trial", "catalog": "", "arms": arms}]}))
    experiment = load_experiments(written).for_catalog("")
    assert experiment is not None and [arm.name for arm in experiment.arms] == ["control", "diverse"]
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid"):
        load_experiments(tmp_path / "broken.json")
