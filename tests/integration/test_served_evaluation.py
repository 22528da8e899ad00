"""`recsys eval --through-gateway` against the running suite: what Recommend serves matches the offline number."""

from __future__ import annotations

import json
from pathlib import Path

from services.cli.main import main
from tests.conftest import SCIENTIFIC
from tests.integration.conftest import LIMIT_ITEMS, RunningSuite


def test_served_evaluation_agrees_with_offline(suite: RunningSuite, tmp_path: Path) -> None:
    out = tmp_path / "served.json"
    main(
        [
            "eval", "--through-gateway", suite.address("gateway"), "--data", str(SCIENTIFIC),
            "--limit-items", str(LIMIT_ITEMS), "--state-dir", str(suite.state_dir), "--users", "60",
            "--json", str(out),
        ]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["users"] == 60
    # The item graph's candidates reach targets the nearest items miss.
    assert result["candidate_recall"] > result["candidate_recall_nearest"]
    for metric in ("ndcg@10", "recall@10"):
        offline = result["offline"][metric]
        assert abs(result["served"][metric] - offline) <= 0.05 * offline + 1e-9, metric
