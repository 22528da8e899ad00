"""Outputs of an evaluation run: the printed table, the JSON rows and the PNG plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.evaluation.runner import MODELS, RunResult
from services.ranker.metrics import METRICS


def _groups(result: RunResult) -> list[tuple[str, bool]]:
    return list(dict.fromkeys((row.protocol, row.masked) for row in result.rows))


def _value(result: RunResult, model: str, protocol: str, masked: bool, metric: str) -> float | None:
    for row in result.rows:
        if (row.model, row.protocol, row.masked, row.metric) == (model, protocol, masked, metric):
            return row.value
    return None


def table(result: RunResult, k: int = 10) -> str:
    """One Markdown table per (protocol, masking): models as rows, the metrics at ``k`` as columns, the seconds
    each model took (fit, tuning and scoring, both maskings together)."""
    out: list[str] = []
    for protocol, masked in _groups(result):
        users = result.users.get(protocol, 0)
        seen = "seen items masked" if masked else "seen items not masked"
        out.append(f"{protocol}, {seen}, full ranking, {users} test users")
        out.append("")
        out.append("| model | " + " | ".join(f"{m}@{k}" for m in METRICS) + " | seconds |")
        out.append("|---" * (len(METRICS) + 2) + "|")
        for model in MODELS:
            values = [_value(result, model, protocol, masked, f"{m}@{k}") for m in METRICS]
            if all(v is None for v in values):
                continue
            cells = ["-" if v is None else f"{v:.4f}" for v in values]
            seconds = result.seconds.get(f"{protocol}/{model}", 0.0)
            out.append(f"| {model} | " + " | ".join(cells) + f" | {seconds:.0f} |")
        out.append("")
    return "\n".join(out)


def write_json(result: RunResult, path: Path, config: dict[str, Any]) -> None:
    document = {
        "config": config,
        "rows": [row.to_dict() for row in result.rows],
        "seconds": {name: round(value, 2) for name, value in result.seconds.items()},
        "choices": result.choices,
        "test_users": result.users,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def plot(result: RunResult, path: Path, metrics: Sequence[str] = ("ndcg@10", "recall@10"), title: str = "") -> None:
    """Grouped bars: one panel per (protocol, masking), one group per model, one bar per metric."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    groups = _groups(result)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    width = 0.8 / len(metrics)
    for ax, (protocol, masked) in zip(axes[0], groups, strict=True):
        models = [m for m in MODELS if _value(result, m, protocol, masked, metrics[0]) is not None]
        for n, metric in enumerate(metrics):
            values = [_value(result, m, protocol, masked, metric) or 0.0 for m in models]
            positions = [i + (n - (len(metrics) - 1) / 2) * width for i in range(len(models))]
            bars = ax.bar(positions, values, width, label=metric)
            ax.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{protocol}, {'masked' if masked else 'unmasked'}", fontsize=10)
        ax.margins(y=0.15)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
