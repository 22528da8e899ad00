"""The data the ranker trains and validates on: per-user sequences of catalog indexes, and cases to find.

Items are 0-based indexes into ``Split.item_ids`` (the catalog order). A case is one user's history (time order)
and the item(s) to find. ``loo_split`` is the split `recsys train` uses: per user, by time, the last item is the
test target, the one before the validation target, the rest is training data; no validation or test target is
ever training data. The evaluation's other protocols (:mod:`services.evaluation.splits`) build the same types.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.datasets.loaders import Dataset


@dataclass(frozen=True)
class Case:
    user_id: str
    history: tuple[int, ...]  # time order
    targets: tuple[int, ...]


@dataclass(frozen=True)
class Split:
    protocol: str
    item_ids: tuple[str, ...]
    train: tuple[tuple[int, ...], ...]  # one time-ordered sequence per user (users without training data left out)
    val: tuple[Case, ...]
    test: tuple[Case, ...]
    cold_items: frozenset[int] = field(default_factory=frozenset)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def indexed_sequences(dataset: Dataset) -> tuple[tuple[str, ...], dict[str, list[int]]]:
    """The catalog's item ids and each user's time-ordered sequence of indexes into them."""
    item_ids = tuple(item.item_id for item in dataset.items)
    index = {item_id: i for i, item_id in enumerate(item_ids)}
    return item_ids, {user: [index[i] for i in seq] for user, seq in dataset.sequences().items()}


def loo_split(dataset: Dataset) -> Split:
    item_ids, sequences = indexed_sequences(dataset)
    train, val, test = [], [], []
    for user, seq in sequences.items():
        if len(seq) >= 2:
            test.append(Case(user, tuple(seq[:-1]), (seq[-1],)))
        if len(seq) >= 3:
            val.append(Case(user, tuple(seq[:-2]), (seq[-2],)))
        train.append(tuple(seq[:-2] if len(seq) >= 3 else seq[:1]))
    return Split("loo", item_ids, tuple(train), tuple(val), tuple(test))
