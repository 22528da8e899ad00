"""`recsys experiments report`: per-arm click-through and conversion of an A/B experiment, from the
impressions the retriever recorded and the events attributed to them."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import grpc

from recsys.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.gateway.backends import impression_from_proto
from services.gateway.experiments import ArmReport, Experiments, Interval, report
from services.gateway.model import Impression

PAGE_SIZE = 1000


def scan_impressions(channel: grpc.Channel, catalog: str, experiment: str) -> Iterator[Impression]:
    stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
    token = ""
    while True:
        response = stub.ListImpressions(
            retriever_pb2.ListImpressionsRequest(
                catalog=catalog, experiment=experiment, limit=PAGE_SIZE, page_token=token
            ),
            timeout=60,
        )
        yield from (impression_from_proto(i) for i in response.impressions)
        token = response.next_page_token
        if not token:
            return


def arm_order(experiment: str, catalog: str, experiments_file: Path | None) -> list[str]:
    """The arms as the experiments file lists them (the first is the control); without the file, "control"
    first if there is one and the rest by name."""
    configured = Experiments.from_file(experiments_file).for_catalog(catalog) if experiments_file else None
    if configured is not None and configured.name == experiment:
        return [arm.name for arm in configured.arms]
    return ["control"]


def _percent(value: float) -> str:
    return f"{100 * value:5.1f}%"


def _with_interval(value: float, interval: Interval) -> str:
    return f"{_percent(value)} [{_percent(interval.low)},{_percent(interval.high)}]"


def format_table(experiment: str, rows: Sequence[ArmReport]) -> str:
    lines = [
        f"Experiment {experiment}: an impression is one shown page; click-through = impressions with an attributed "
        "event, conversion = impressions with an attributed purchase; 95% intervals (Wilson; Newcombe for lifts "
        "against the first arm)",
        f"{'arm':<14}{'users':>7}{'impr.':>8}{'engaged':>9}{'conv.':>7}  {'click-through':<24}{'conversion':<24}"
        f"{'CTR lift':<26}{'conversion lift':<26}",
    ]
    for row in rows:
        ctr = _with_interval(row.click_through, row.click_through_ci)
        conversion = _with_interval(row.conversion, row.conversion_ci)
        lifts = []
        for lift, interval in (
            (row.click_through_lift, row.click_through_lift_ci),
            (row.conversion_lift, row.conversion_lift_ci),
        ):
            lifts.append(
                "(control)"
                if lift is None or interval is None
                else f"{100 * lift:+5.1f} pts [{100 * interval.low:+5.1f},{100 * interval.high:+5.1f}]"
            )
        lines.append(
            f"{row.arm:<14}{row.users:>7}{row.impressions:>8}{row.engaged:>9}{row.converted:>7}  {ctr:<24}"
            f"{conversion:<24}{lifts[0]:<26}{lifts[1]:<26}"
        )
    return "\n".join(lines)


def run_report(
    retriever: str, experiment: str, catalog: str, experiments_file: Path | None, json_path: Path | None
) -> list[ArmReport]:
    with grpc.insecure_channel(retriever) as channel:
        rows = report(
            experiment, arm_order(experiment, catalog, experiments_file), scan_impressions(channel, catalog, experiment)
        )
    print(format_table(experiment, rows))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(
            json.dumps({"experiment": experiment, "catalog": catalog, "arms": [asdict(r) for r in rows]}, indent=2)
        )
    return rows
