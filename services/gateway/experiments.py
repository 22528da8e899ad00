"""A/B experiments: their definition (a JSON file named by GATEWAY_EXPERIMENTS_FILE), the deterministic
split of callers into arms, and the per-arm report of click-through and conversion from recorded
impressions. No I/O besides reading the definition file.

A caller's arm depends only on the experiment's name and the caller's id (a SHA-256 hash), so every gateway
replica puts a user in the same arm without sharing state, and a user keeps the arm while the experiment
runs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.common.catalogs import check_catalog
from services.common.errors import InvalidArgumentError
from services.gateway.model import Impression

Z_95 = 1.959963984540054


class ArmSettings(BaseModel):
    """Gateway settings an arm may change; unset ones keep the gateway's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ranker_weight: float | None = Field(None, ge=0, le=1)
    query_weight: float | None = Field(None, ge=0, le=1)
    candidate_pool: int | None = Field(None, ge=1, le=1000)
    diversity: float | None = Field(None, ge=0, le=1)
    max_per_category: int | None = Field(None, ge=0)
    rotation_after: int | None = Field(None, ge=0)


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    # Relative share of callers; arms of weight 1 and 1 split 50/50.
    weight: float = Field(1.0, gt=0)
    # Ranker checkpoint version this arm scores with; empty: the newest.
    model_version: str = ""
    settings: ArmSettings = ArmSettings()


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    catalog: str = ""
    arms: tuple[Arm, ...] = Field(min_length=2)

    @model_validator(mode="after")
    def _distinct_arms(self) -> Experiment:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r} has two arms of one name: {names}")
        check_catalog(self.catalog)
        return self

    def assign(self, unit_id: str) -> Arm:
        """The arm of a caller: a hash of the experiment's name and the caller's id, mapped onto the arms'
        cumulative weights."""
        digest = hashlib.sha256(f"{self.name}\x00{unit_id}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64 * sum(arm.weight for arm in self.arms)
        for arm in self.arms:
            point -= arm.weight
            if point < 0:
                return arm
        return self.arms[-1]


class ExperimentsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    experiments: tuple[Experiment, ...] = ()

    @model_validator(mode="after")
    def _one_per_catalog(self) -> ExperimentsFile:
        catalogs = [e.catalog for e in self.experiments]
        if len(set(catalogs)) != len(catalogs):
            raise ValueError("two experiments run on one catalog: run one experiment per catalog at a time")
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise ValueError(f"two experiments share a name: {names}")
        return self


class Experiments:
    """The running experiments, at most one per catalog."""

    def __init__(self, experiments: Sequence[Experiment] = ()) -> None:
        self._by_catalog = {e.catalog: e for e in experiments}

    @classmethod
    def from_file(cls, path: Path | None) -> Experiments:
        if path is None:
            return cls()
        try:
            parsed = ExperimentsFile.model_validate_json(path.read_text())
        except (OSError, ValidationError) as error:
            raise ValueError(f"experiments file {path} is not valid: {error}") from error
        return cls(parsed.experiments)

    def for_catalog(self, catalog: str) -> Experiment | None:
        return self._by_catalog.get(catalog)


# ---- report ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class ArmReport:
    """One arm's numbers. An impression is one shown page; it is engaged when an event was attributed to
    one of its items, converted when a purchase was."""

    arm: str
    users: int
    impressions: int
    items_shown: int
    engaged: int
    converted: int
    click_through: float
    click_through_ci: Interval
    conversion: float
    conversion_ci: Interval
    # Difference to the first arm (the control), with a 95% interval; None for the control itself.
    click_through_lift: float | None
    click_through_lift_ci: Interval | None
    conversion_lift: float | None
    conversion_lift_ci: Interval | None


def wilson(successes: int, trials: int, z: float = Z_95) -> Interval:
    """Wilson score interval of a proportion (sound at small counts and at 0 or 1)."""
    if trials == 0:
        return Interval(0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def difference_interval(
    treatment: tuple[int, int], control: tuple[int, int], z: float = Z_95
) -> tuple[float, Interval]:
    """Difference of two proportions with Newcombe's hybrid score interval (from the two Wilson
    intervals), which keeps its coverage at small counts where the plain Wald interval does not."""
    (s1, n1), (s0, n0) = treatment, control
    p1 = s1 / n1 if n1 else 0.0
    p0 = s0 / n0 if n0 else 0.0
    w1, w0 = wilson(s1, n1, z), wilson(s0, n0, z)
    difference = p1 - p0
    low = difference - math.sqrt((p1 - w1.low) ** 2 + (w0.high - p0) ** 2)
    high = difference + math.sqrt((w1.high - p1) ** 2 + (p0 - w0.low) ** 2)
    return difference, Interval(low, high)


def report(experiment: str, arms: Sequence[str], impressions: Iterable[Impression]) -> list[ArmReport]:
    """Per-arm click-through and conversion over the experiment's impressions. `arms` fixes the order (the
    first is the control); arms seen in the data but not listed follow in name order."""
    counts: dict[str, dict[str, int]] = {}
    users: dict[str, set[str]] = {}
    for impression in impressions:
        if impression.experiment != experiment:
            continue
        row = counts.setdefault(impression.arm, {"impressions": 0, "items": 0, "engaged": 0, "converted": 0})
        row["impressions"] += 1
        row["items"] += len(impression.item_ids)
        row["engaged"] += bool(impression.engaged_item_ids)
        row["converted"] += bool(impression.converted_item_ids)
        users.setdefault(impression.arm, set()).add(impression.user_id or impression.recommendation_id)
    if not counts:
        raise InvalidArgumentError(f"no impressions of experiment {experiment!r}: has it served any traffic?")
    order = [arm for arm in arms if arm in counts] + sorted(set(counts) - set(arms))
    control = counts[order[0]]
    rows = []
    for arm in order:
        row = counts[arm]
        n = row["impressions"]
        is_control = arm == order[0]
        ctr_lift = (
            None
            if is_control
            else difference_interval((row["engaged"], n), (control["engaged"], control["impressions"]))
        )
        conv_lift = (
            None
            if is_control
            else difference_interval((row["converted"], n), (control["converted"], control["impressions"]))
        )
        rows.append(
            ArmReport(
                arm=arm,
                users=len(users[arm]),
                impressions=n,
                items_shown=row["items"],
                engaged=row["engaged"],
                converted=row["converted"],
                click_through=row["engaged"] / n,
                click_through_ci=wilson(row["engaged"], n),
                conversion=row["converted"] / n,
                conversion_ci=wilson(row["converted"], n),
                click_through_lift=None if ctr_lift is None else ctr_lift[0],
                click_through_lift_ci=None if ctr_lift is None else ctr_lift[1],
                conversion_lift=None if conv_lift is None else conv_lift[0],
                conversion_lift_ci=None if conv_lift is None else conv_lift[1],
            )
        )
    return rows
