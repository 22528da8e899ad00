"""The operator console in a real browser (Debian's headless chromium driven by Playwright) against the five real
services: a user's page with ten recommendations and their reasons, a new query that changes the list, an item's
page, an experiment's report and the suite's state; item text with a <script> shows as text. The screenshots in
docs/ (shown in the README) are taken here, written there only with RECSYS_UPDATE_SCREENSHOTS=1 (else to the
test's tmp_path), so a plain `make test` leaves a clean clone clean."""

from __future__ import annotations

import os
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from recsys_client import AsyncRecsysClient, CatalogItem, Event
from services.console.launch import CONSOLE_PORT_OFFSET
from tests.conftest import REPO_ROOT
from tests.integration.conftest import RunningSuite

playwright_api = pytest.importorskip("playwright.async_api", reason="pip install -e '.[dev]' installs Playwright")

CHROMIUM = Path(os.environ.get("RECSYS_CHROMIUM", "/usr/bin/chromium"))
INSTALL = "apt-get update && apt-get install -y chromium"
DOCS = REPO_ROOT / "docs"
HOSTILE_TITLE = '<script>document.title="pwned"</script>Glue that <b>escapes</b>'
DEMO_CATALOG = "console-demo"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"chromium is not installed: run `{INSTALL}` as root")


def _console_url(suite: RunningSuite) -> str:
    url = f"http://127.0.0.1:{suite.base_port + CONSOLE_PORT_OFFSET}"
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
        assert response.status == 200, "`recsys up` starts the console on the gateway port + 5"
    return url


@pytest.fixture(scope="module")
async def demo_experiment(suite: RunningSuite) -> str:
    """A small catalog with an item whose title carries a script, and an experiment's worth of impressions (the
    retriever's own RPC) with clicks attributed through the gateway, for the report page."""
    async with AsyncRecsysClient(suite.address("gateway"), deadline=60) as client:
        items = [CatalogItem("xss-1", HOSTILE_TITLE, categories=["Adhesives"])] + [
            CatalogItem(f"demo-{n}", title, categories=["Adhesives"])
            for n, title in enumerate(["Wood glue, 8 oz", "Epoxy, two-part", "Super glue gel", "Hot glue sticks"])
        ]
        await client.upsert_items(items, catalog=DEMO_CATALOG)
        channel = grpc.aio.insecure_channel(suite.address("retriever"))
        retriever = retriever_pb2_grpc.RetrieverServiceStub(channel)
        events = []
        for n in range(40):
            arm = "control" if n % 2 else "diverse"
            recommendation = f"demo-rec-{uuid.uuid4().hex[:8]}"
            impression = retriever_pb2.Impression(
                recommendation_id=recommendation, page=1, user_id=f"demo-user-{n}", item_ids=["demo-0", "demo-1"],
                experiment="console-trial", arm=arm, timestamp=time.time(),
            )  # fmt: skip
            await retriever.RecordImpression(
                retriever_pb2.RecordImpressionRequest(catalog=DEMO_CATALOG, impression=impression), timeout=30
            )
            if n % (3 if arm == "diverse" else 5) == 0:
                events.append(Event(f"demo-user-{n}", "demo-0", "click", recommendation_id=recommendation))
        await channel.close()
        await client.record_events(events, catalog=DEMO_CATALOG)
    return "console-trial"


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """docs/ when the tracked screenshots are to be refreshed, else pytest's own folder for this test."""
    return DOCS if os.environ.get("RECSYS_UPDATE_SCREENSHOTS") == "1" else tmp_path


@pytest.fixture
async def page() -> AsyncIterator[playwright_api.Page]:
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1400, "height": 900})
        yield page
        await browser.close()


def _user_with_history(suite: RunningSuite) -> str:
    sequences = suite.dataset.sequences()
    return max(sequences, key=lambda user: (len(sequences[user]), user))


async def _titles(page: playwright_api.Page) -> list[str]:
    return [title.strip() for title in await page.locator("#recommendations a.item-link").all_inner_texts()]


async def test_an_operator_browses_a_user_an_item_an_experiment_and_the_suite(
    suite: RunningSuite, page: playwright_api.Page, demo_experiment: str, screenshots: Path
) -> None:
    console = _console_url(suite)
    user = _user_with_history(suite)

    await page.goto(f"{console}/users/{user}")
    rows = page.locator("#recommendations tbody tr")
    assert await rows.count() == 10
    reasons = [reason.strip() for reason in await page.locator("#recommendations td.reason").all_inner_texts()]
    assert len(reasons) == 10 and all(reasons), reasons
    # Other tests may have recorded events for the user since the data was loaded.
    assert await page.locator("#history tbody tr").count() >= len(suite.dataset.sequences()[user])
    before = await _titles(page)
    await page.screenshot(path=screenshots / "console-user.png", full_page=True)

    await page.fill("input[name=q]", "waterproof glue")
    await page.click("#options button")
    await page.wait_for_url("**q=waterproof+glue**")
    after = await _titles(page)
    assert len(after) == 10 and after != before, "the query changes the list"

    await page.click("#recommendations a.item-link >> nth=0")
    await page.wait_for_url("**/items/**")
    assert (await page.locator("#item-title").inner_text()).strip() == after[0]
    assert await page.locator("#similar tbody tr").count() == 10
    await page.screenshot(path=screenshots / "console-item.png", full_page=True)

    await page.goto(f"{console}/experiments?name={demo_experiment}&catalog={DEMO_CATALOG}")
    assert await page.locator("#chart rect").count() == 4, "click-through and conversion bars of two arms"
    assert await page.locator("#arms tbody tr").count() == 2
    await page.screenshot(path=screenshots / "console-experiments.png", full_page=True)

    await page.goto(f"{console}/suite")
    assert await page.locator("#health td.ok").count() == 5, "the five services report SERVING"
    assert await page.locator("#catalogs tbody tr").count() >= 1
    await page.screenshot(path=screenshots / "console-suite.png", full_page=True)


async def test_a_script_in_an_item_title_shows_as_text(
    suite: RunningSuite, page: playwright_api.Page, demo_experiment: str
) -> None:
    console = _console_url(suite)
    await page.goto(f"{console}/items/xss-1?catalog={DEMO_CATALOG}")
    assert (await page.locator("#item-title").inner_text()).strip() == HOSTILE_TITLE
    assert "pwned" not in await page.title()
    assert await page.locator("#item-title b").count() == 0, "markup in the title is not markup on the page"
