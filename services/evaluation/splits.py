"""Evaluation protocols: how a data set becomes training sequences and validation/test cases.

The types and the leave-one-out split are the ranker's own (:mod:`services.ranker.splits`); this module adds the
protocols only the evaluation uses. No protocol ever puts a validation or test target into training data.

- ``loo``: per user, by time: the last item is the test target, the one before the validation target, the rest is
  training data. For the benchmark format this is exactly its shipped split (``test.inter`` holds each user's
  sequence; ``valid.inter``'s targets are the items before the test targets), which :func:`benchmark_split` checks.
- ``ratio``: per user, a seeded random 8:1:1 split (RecBole's ``RO`` ordering and its rounding); histories keep
  time order.
- cold start (:func:`cold_start`): 10% of the items, drawn with the seed, lose all their interactions from
  training; test cases are the users whose test targets include one of them, with only those as targets.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from services.datasets.loaders import Dataset, Interaction
from services.ranker.splits import Case, Split, indexed_sequences, loo_split

PROTOCOLS = ("loo", "ratio")


def filter_dataset(dataset: Dataset, min_rating: float | None = None, core: int = 0) -> Dataset:
    """RecBole-style filtering: drop interactions rated below ``min_rating``, then repeatedly drop users and items
    with fewer than ``core`` interactions until none is left (the ``k``-core). Items keep catalog order."""
    kept: list[Interaction] = [
        it for it in dataset.interactions if min_rating is None or (it.rating is not None and it.rating >= min_rating)
    ]
    while core > 0:
        users = Counter(it.user_id for it in kept)
        items = Counter(it.item_id for it in kept)
        smaller = [it for it in kept if users[it.user_id] >= core and items[it.item_id] >= core]
        if len(smaller) == len(kept):
            break
        kept = smaller
    used = {it.item_id for it in kept}
    return Dataset(
        name=dataset.name,
        items=tuple(i for i in dataset.items if i.item_id in used) if core > 0 else dataset.items,
        interactions=tuple(kept),
    )


def benchmark_split(dataset: Dataset, path: Path) -> Split:
    """The benchmark's own split, built as leave-one-out and checked against ``<Name>.valid.inter``."""
    split = loo_split(dataset)
    valid_files = sorted(Path(path).glob("*.valid.inter"))
    if len(valid_files) != 1:
        return replace(split, protocol="benchmark")
    name = valid_files[0].name.removesuffix(".valid.inter")
    items = _read_pairs(Path(path) / f"{name}.item2index")
    users = _read_pairs(Path(path) / f"{name}.user2index")
    index = {item_id: i for i, item_id in enumerate(split.item_ids)}
    expected = {}
    for line in valid_files[0].read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            user, _, target = line.split("\t")
            expected[users[user.strip()]] = index.get(items[target.strip()])
    got = {case.user_id: case.targets[0] for case in split.val}
    if got != expected:
        differing = sum(1 for u in expected if got.get(u) != expected[u])
        raise ValueError(f"{valid_files[0]}: {differing} validation targets differ from the leave-one-out split")
    return replace(split, protocol="benchmark")


def _read_pairs(file: Path) -> dict[str, str]:
    """index -> original id of a ``<id><TAB><index>`` file."""
    out = {}
    for line in file.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[1].strip().isdigit():
            out[parts[1].strip()] = parts[0].strip()
    return out


def _ratio_counts(total: int, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> list[int]:
    # RecBole's _calcu_split_ids: floor every part, the first takes the rest, then a part whose share is below
    # one interaction still gets one while the first part has more than one.
    counts = [int(r * total) for r in ratios]
    counts[0] = total - sum(counts[1:])
    for i in range(1, len(ratios)):
        if counts[0] <= 1:
            break
        if 0 < ratios[-i] * total < 1:
            counts[-i] += 1
            counts[0] -= 1
    return counts


def ratio_split(dataset: Dataset, seed: int) -> Split:
    item_ids, sequences = indexed_sequences(dataset)
    rng = random.Random(seed)
    train, val, test = [], [], []
    for user, seq in sequences.items():
        positions = list(range(len(seq)))
        rng.shuffle(positions)
        n_train, n_val, _ = _ratio_counts(len(seq))
        parts = [
            sorted(positions[:n_train]),
            sorted(positions[n_train : n_train + n_val]),
            sorted(positions[n_train + n_val :]),
        ]
        train_seq = tuple(seq[p] for p in parts[0])
        val_items = tuple(dict.fromkeys(seq[p] for p in parts[1]))
        test_items = tuple(dict.fromkeys(seq[p] for p in parts[2]))
        if train_seq:
            train.append(train_seq)
        if train_seq and val_items:
            val.append(Case(user, train_seq, val_items))
        if test_items:
            history = tuple(seq[p] for p in sorted(parts[0] + parts[1]))
            if history:
                test.append(Case(user, history, test_items))
    return Split("ratio", item_ids, tuple(train), tuple(val), tuple(test))


def make_split(dataset: Dataset, protocol: str, seed: int, path: Path | None = None) -> Split:
    if protocol == "benchmark":
        if path is None:
            raise ValueError("the benchmark split needs the data folder")
        return benchmark_split(dataset, path)
    if protocol == "loo":
        return loo_split(dataset)
    if protocol == "ratio":
        return ratio_split(dataset, seed)
    raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")


def cold_start(split: Split, seed: int, share: float = 0.1) -> Split:
    """Hold out ``share`` of the items with all their interactions from training.

    Validation keeps its warm targets only (weights are tuned as if the cold items did not exist yet); test cases
    are the users with a cold test target, scored on their cold targets. Histories keep cold items: a user's past
    is known at request time even when the model never trained on the item.
    """
    rng = random.Random(seed)
    cold = frozenset(rng.sample(range(split.n_items), round(share * split.n_items)))
    train = _train_without(split.train, cold)
    val = _cases_on(split.val, lambda i: i not in cold)
    test = _cases_on(split.test, cold.__contains__)
    return Split(f"{split.protocol}-cold", split.item_ids, train, val, test, cold)


@dataclass(frozen=True)
class HeldOutValidation:
    """Validation on items new to the model, for a cold-start split: ``split`` is ``cold`` with another share of
    its items held out of training too, and ``cases`` are the validation users whose target is one of those,
    scored on them. Ours is fitted on ``split`` to choose its blend and encoder on ``cases``, then fitted again on
    ``cold``, with those items back in training, and served with that choice."""

    split: Split
    cases: tuple[Case, ...]


def held_out_validation(cold: Split, seed: int, share: float = 0.1) -> HeldOutValidation:
    rng = random.Random(seed + 1)  # another draw than the test's items
    count = round(share * cold.n_items)
    items = frozenset(rng.sample([i for i in range(cold.n_items) if i not in cold.cold_items], count))
    held = cold.cold_items | items
    split = Split(
        cold.protocol,
        cold.item_ids,
        _train_without(cold.train, held),
        _cases_on(cold.val, lambda i: i not in held),
        cold.test,
        held,
    )
    cases = _cases_on(cold.val, items.__contains__)
    return HeldOutValidation(split, cases)


def _train_without(train: Sequence[Sequence[int]], items: frozenset[int]) -> tuple[tuple[int, ...], ...]:
    """The training sequences with ``items`` taken out (a sequence left empty is dropped)."""
    return tuple(t for t in (tuple(i for i in seq if i not in items) for seq in train) if t)


def _cases_on(cases: Sequence[Case], keep: Callable[[int], bool]) -> tuple[Case, ...]:
    """Each case with only the targets ``keep`` accepts; a case left with none is dropped."""
    return tuple(Case(c.user_id, c.history, hit) for c in cases if (hit := tuple(i for i in c.targets if keep(i))))
