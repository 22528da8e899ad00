"""Business rules, diversity and experiments of the gateway, on hand-made inputs with hand-computed answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.gateway.backends import JsonPayload
from services.gateway.experiments import (
    Arm,
    Experiment,
    Experiments,
    difference_interval,
    report,
    wilson,
)
from services.gateway.model import Impression, StoredItem
from services.gateway.rules import (
    Boost,
    Pin,
    Rotation,
    boost_scores,
    place_pins,
    rotation_penalties,
    select_page,
)


def item(item_id: str, category: str, vector: tuple[float, ...], **payload: object) -> StoredItem:
    return StoredItem(item_id, 0.0, {"categories": ["root", category], **payload}, np.asarray(vector))


# Three near-duplicates in one category, then two different items.
ITEMS = [
    item("a1", "abrasives", (1.0, 0.0, 0.0)),
    item("a2", "abrasives", (0.99, 0.14, 0.0)),
    item("a3", "abrasives", (0.98, 0.0, 0.2)),
    item("g", "glue", (0.0, 1.0, 0.0), brand="Acme", in_stock=True, price=12.5),
    item("m", "measure", (0.0, 0.0, 1.0)),
]
SCORES = np.asarray([5.0, 4.9, 4.8, 1.0, 0.5])


def ids(order: tuple[int, ...]) -> list[str]:
    return [ITEMS[i].item_id for i in order]


def test_without_diversity_the_page_is_the_best_scores() -> None:
    selection = select_page(ITEMS, SCORES, 3, 0.0, 0)
    assert ids(selection.order) == ["a1", "a2", "a3"] and selection.has_more


def test_diversity_trades_relevance_for_unlike_items() -> None:
    diverse = select_page(ITEMS, SCORES, 3, 1.0, 0)
    assert ids(diverse.order) == ["a1", "g", "m"]
    assert diverse.redundancy[0] == 0.0 and diverse.redundancy[1] == pytest.approx(0.0, abs=1e-9)
    assert ids(select_page(ITEMS, SCORES, 3, 0.3, 0).order)[0] == "a1"


def test_category_cap_holds_per_page() -> None:
    capped = select_page(ITEMS, SCORES, 3, 0.0, 1)
    assert ids(capped.order) == ["a1", "g", "m"] and capped.has_more
    two = select_page(ITEMS, SCORES, 5, 0.0, 2)
    assert ids(two.order) == ["a1", "a2", "g", "m"]


def test_boosts_match_categories_and_attributes() -> None:
    boosts = [
        Boost(2.0, category="glue"),
        Boost(1.0, field="brand", value="Acme"),
        Boost(-1.0, field="price", value="12.5"),
    ]
    assert boost_scores(ITEMS, boosts).tolist() == [0.0, 0.0, 0.0, 2.0, 0.0]
    assert boost_scores(ITEMS, [Boost(1.0, field="in_stock", value="true")]).tolist() == [0, 0, 0, 1, 0]


def test_rotation_penalises_each_showing_past_the_threshold() -> None:
    penalties = rotation_penalties(ITEMS, {"a1": 5, "a2": 2, "g": 3}, Rotation(after=3, penalty=0.5))
    assert penalties.tolist() == [1.5, 0.0, 0.0, 0.5, 0.0]
    assert not rotation_penalties(ITEMS, {"a1": 9}, Rotation(after=0)).any()


def test_pins_take_their_positions_and_later_pins_move_up_on_short_pages() -> None:
    assert place_pins(["x", "y", "z"], [Pin("p", 2)], 3) == [("x", False), ("p", True), ("y", False)]
    assert place_pins(["x", "p"], [Pin("p", 1)], 3) == [("p", True), ("x", False)]
    assert place_pins(["x"], [Pin("p", 3)], 3) == [("x", False), ("p", True)]


def test_arms_split_near_half_and_half_and_stay_put() -> None:
    experiment = Experiment(name="ranker-v2", arms=(Arm(name="control"), Arm(name="treatment")))
    arms = [experiment.assign(f"user-{n}").name for n in range(10_000)]
    share = arms.count("treatment") / len(arms)
    assert 0.48 <= share <= 0.52
    assert arms == [experiment.assign(f"user-{n}").name for n in range(10_000)]
    weighted = Experiment(name="w", arms=(Arm(name="a", weight=3), Arm(name="b", weight=1)))
    assert 0.72 <= [weighted.assign(str(n)).name for n in range(10_000)].count("a") / 10_000 <= 0.78
    # Another experiment splits independently of the first.
    other = Experiment(name="other", arms=(Arm(name="control"), Arm(name="treatment")))
    agree = sum(experiment.assign(str(n)).name == other.assign(str(n)).name for n in range(10_000))
    assert 0.47 <= agree / 10_000 <= 0.53


def test_experiments_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "experiments.json"
    arms = [{"name": "control"}, {"name": "fusion", "model_version": "v2", "settings": {"ranker_weight": 0.5}}]
    path.write_text(json.dumps({"experiments": [{"name": "e1", "arms": arms}]}))
    experiments = Experiments.from_file(path)
    found = experiments.for_catalog("")
    assert found is not None and found.arms[1].settings.ranker_weight == 0.5
    assert experiments.for_catalog("news") is None
    for broken in (
        {"experiments": [{"name": "e1", "arms": arms}, {"name": "e2", "arms": arms}]},  # two on one catalog
        {"experiments": [{"name": "e1", "arms": [arms[0], arms[0]]}]},  # arms of one name
        {"experiments": [{"name": "e1", "arms": [{"name": "a", "settings": {"colour": 1}}, arms[0]]}]},
    ):
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match="not valid"):
            Experiments.from_file(path)


def test_wilson_and_newcombe_against_hand_computed_values() -> None:
    interval = wilson(10, 100)
    assert interval.low == pytest.approx(0.05523, abs=1e-4) and interval.high == pytest.approx(0.17437, abs=1e-4)
    assert wilson(0, 20).low == 0.0
    difference, around = difference_interval((20, 100), (10, 100))
    assert difference == pytest.approx(0.10)
    # By hand: Wilson 20/100 is [0.13336, 0.28883], 10/100 is [0.05523, 0.17437]; Newcombe's interval is
    # 0.1 - sqrt(0.06664**2 + 0.07437**2) = 0.00014 and 0.1 + sqrt(0.08883**2 + 0.04477**2) = 0.19947.
    assert around.low == pytest.approx(0.00014, abs=1e-4) and around.high == pytest.approx(0.19947, abs=1e-4)


def test_report_counts_match_a_hand_count() -> None:
    def shown(
        rec: str, user: str, arm: str, engaged: tuple[str, ...] = (), converted: tuple[str, ...] = ()
    ) -> Impression:
        return Impression(rec, 1, user, ("x", "y"), "e1", arm, 0.0, engaged, converted)

    impressions = [
        shown("r1", "u1", "control", ("x",)),
        shown("r2", "u1", "control"),
        shown("r3", "u2", "control", ("y",), ("y",)),
        shown("r4", "u3", "treatment", ("x", "y"), ("x",)),
        shown("r5", "u4", "treatment", ("x",)),
        Impression("r6", 1, "u9", ("x",), "other", "control"),
    ]
    control, treatment = report("e1", ["control", "treatment"], impressions)
    assert (control.users, control.impressions, control.items_shown, control.engaged, control.converted) == (
        2,
        3,
        6,
        2,
        1,
    )
    assert control.click_through == pytest.approx(2 / 3) and control.conversion == pytest.approx(1 / 3)
    assert control.click_through_lift is None
    assert (treatment.impressions, treatment.engaged, treatment.converted) == (2, 2, 1)
    assert treatment.click_through_lift == pytest.approx(1 - 2 / 3)
    assert treatment.conversion_lift == pytest.approx(0.5 - 1 / 3)
    with pytest.raises(ValueError, match="no impressions"):
        report("missing", [], impressions)


def test_a_json_payload_decodes_on_first_read_and_reads_like_a_dict() -> None:
    raw = b'{"title": "Nitrile gloves", "categories": ["Safety", "Gloves"], "price": 9.5}'
    payload = JsonPayload(raw)
    assert payload._decoded is None  # nothing decoded until a field is read
    item = StoredItem("g1", 0.5, payload)
    assert item.title == "Nitrile gloves" and item.categories == ("Safety", "Gloves")
    assert dict(payload) == json.loads(raw) and payload.get("missing") is None and len(payload) == 3
    assert dict(JsonPayload(b"")) == {}
