"""Our EASE and ItemKNN against the same models from maintained libraries (cornac's EASE, implicit's cosine
ItemKNN), each tuned on validation as `recsys eval` tunes it, on the same split and metric code: the baseline rows
of `recsys eval` alone, without the models that train a transformer. ``--no-self`` adds implicit's ItemKNN with
each item's similarity to itself cleared (what explains the unmasked gap).

    nice -n 10 .venv/bin/python bench/library_baselines.py --datasets ml-100k
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import machine, machine_line, table, write_json
from bench.graph_accuracy import DATA, RECIPES
from services.datasets.loaders import load_dataset
from services.evaluation.baselines import KNN_NEIGHBOURS, item_knn
from services.evaluation.library import LIBRARY_MODELS, ItemWeightsScorer, implicit_itemknn
from services.evaluation.splits import filter_dataset, make_split
from services.ranker.graph import EASE_LAMBDAS, ease, gram
from services.ranker.scoring import ItemItemScorer, Scorer, evaluate, tune, unseen_items
from services.ranker.splits import Split


def without_self(scorer: ItemWeightsScorer) -> ItemWeightsScorer:
    weights = sp.csr_matrix(scorer.weights)
    weights.setdiag(0)
    weights.eliminate_zeros()
    return ItemWeightsScorer(weights, scorer.unknown)


def compare(name: str, split: Split) -> list[list[str]]:
    rows: list[list[str]] = []
    unknown = unseen_items(split.train, split.n_items)
    g = gram(split.train, split.n_items).toarray()
    for mask in (True, False):
        ours: dict[str, tuple[Scorer, str]] = {}
        lam, _ = tune(EASE_LAMBDAS, lambda lam: ItemItemScorer(ease(g, lam), unknown), split.val, mask)
        ours["ease"] = ItemItemScorer(ease(g, lam), unknown), f"lambda {lam:g}"
        k, _ = tune(KNN_NEIGHBOURS, lambda k: ItemItemScorer(item_knn(g, k), unknown), split.val, mask)
        ours["itemknn"] = ItemItemScorer(item_knn(g, k), unknown), f"k {k}"
        chosen_by: dict[str, dict[str, object]] = {}
        for library_model in LIBRARY_MODELS[:2]:  # cornac-ease, implicit-itemknn
            scorer, chosen_by[library_model.name] = library_model.tuned(split, mask, 0)
            ours[library_model.name] = scorer, str(chosen_by[library_model.name])
        k_library = int(str(chosen_by["implicit-itemknn"]["k"]))
        ours["implicit-itemknn, self cleared"] = without_self(implicit_itemknn(split, k_library)), f"k {k_library}"
        for model, (scorer, chosen) in ours.items():
            test = evaluate(scorer, split.test, mask, ks=(10,))
            masked = "masked" if mask else "unmasked"
            rows.append([name, masked, model, f"{test['ndcg@10']:.4f}", f"{test['recall@10']:.4f}", chosen])
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--datasets", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--name", default="library_baselines", help="docs/results/<name>.json")
    args = parser.parse_args()
    info = machine()
    rows: list[list[str]] = []
    for name in args.datasets:
        fmt, protocol, rating, core = RECIPES[name]
        dataset = load_dataset(args.data / name, fmt)
        if rating is not None or core:
            dataset = filter_dataset(dataset, rating, core)
        split = make_split(dataset, protocol, 0, args.data / name)
        rows.extend(compare(name, split))
    print(machine_line(info))
    print(table(["dataset", "seen items", "model", "NDCG@10", "Recall@10", "validation chose"], rows))
    write_json(args.name, {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
