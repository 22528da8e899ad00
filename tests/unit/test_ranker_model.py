from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from services.datasets.loaders import CatalogItem, Dataset, Interaction, load_dataset
from services.ranker.checkpoints import latest_checkpoint, load_scorer, save_checkpoint
from services.ranker.graph import fit_graph_weights, text_neighbours
from services.ranker.model import (
    Fusion,
    ItemGraph,
    ModelConfig,
    RankerModel,
    RankerScorer,
    ScoreRequest,
    recency_weights,
)
from services.ranker.splits import Case, Split, loo_split
from services.ranker.training import TrainConfig, TrainResult, replace_fusion, train_ranker

SCIENTIFIC = Path(os.environ.get("RECSYS_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data")) / (
    "amazon-scientific"
)
FAST = TrainConfig(dim=32, layers=1, heads=1, max_len=20, max_epochs=3, batch_size=64, seed=7)


def _random_vectors(ids: list[str], seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(len(ids), 384)).astype(np.float32)
    unit: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return unit


def _synthetic_dataset(n_items: int = 60, n_users: int = 80) -> Dataset:
    """Users walk through consecutive items, so the next item is predictable."""
    rng = np.random.default_rng(1)
    items = tuple(CatalogItem(item_id=f"i{n}", title=f"item {n}") for n in range(n_items))
    interactions = []
    for u in range(n_users):
        start = int(rng.integers(0, n_items - 8))
        for t in range(int(rng.integers(4, 8))):
            interactions.append(Interaction(user_id=f"u{u:03d}", item_id=f"i{start + t}", timestamp=float(t)))
    return Dataset(name="synthetic", items=items, interactions=tuple(interactions))


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    if SCIENTIFIC.is_dir():
        return load_dataset(SCIENTIFIC, limit_items=300)
    return _synthetic_dataset()


@pytest.fixture(scope="module")
def vectors(dataset: Dataset) -> tuple[list[str], np.ndarray]:
    ids = [item.item_id for item in dataset.items]
    return ids, _random_vectors(ids)


@pytest.fixture(scope="module")
def result(dataset: Dataset, vectors: tuple[list[str], np.ndarray]) -> TrainResult:
    return train_ranker(dataset, vectors, FAST, progress=False)


def test_training_reports_metrics(result: TrainResult, dataset: Dataset) -> None:
    assert 1 <= result.best_epoch <= result.epochs <= FAST.max_epochs
    for prefix in ("val_", "test_", "text_only_"):
        for name in ("recall", "ndcg", "hit", "mrr"):
            assert 0.0 <= result.metrics[f"{prefix}{name}@10"] <= 1.0
    assert result.n_items == len(dataset.items)
    assert result.dataset_hash == dataset.content_hash()


def test_training_is_repeatable(result: TrainResult, dataset: Dataset, vectors: tuple[list[str], np.ndarray]) -> None:
    ids, matrix = vectors
    again = train_ranker(dataset, dict(zip(ids, matrix, strict=True)), FAST, progress=False)
    assert again.metrics == result.metrics
    for name, tensor in result.state_dict.items():
        assert torch.equal(tensor, again.state_dict[name]), name


def test_training_learns_a_predictable_sequence() -> None:
    ds = _synthetic_dataset()
    ids = [item.item_id for item in ds.items]
    config = TrainConfig(dim=32, layers=1, heads=1, max_len=10, max_epochs=30, patience=30, lr=5e-3, seed=0)
    trained = train_ranker(ds, (ids, _random_vectors(ids)), config, progress=False)
    assert trained.metrics["test_hit@10"] > 0.5
    assert trained.metrics["test_hit@10"] > trained.metrics["text_only_hit@10"]


def test_missing_vectors_are_reported(dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="have no text vector"):
        train_ranker(dataset, {}, FAST, progress=False)


def test_scorer_known_unknown_and_empty_history(result: TrainResult, vectors: tuple[list[str], np.ndarray]) -> None:
    ids, matrix = vectors
    # The transformer's term tells a known id from an unknown one; validation may have served the model without it.
    scorer = replace_fusion(result.scorer(), dataclasses.replace(result.fusion, sequence=1.0))
    new_vectors = _random_vectors(["new-1", "new-2"], seed=5)
    candidates = [ids[3], "new-1", ids[4], "new-2"]
    candidate_vectors = np.stack([matrix[3], new_vectors[0], matrix[4], new_vectors[1]])
    scores = scorer.score(ids[:5], matrix[:5], candidates, candidate_vectors)
    assert scores.dtype == np.float32 and scores.shape == (4,)
    assert np.all(np.isfinite(scores))
    # An unknown id is scored from its text alone: same as a known item with its ID embedding left out.
    text_only = scorer.score(ids[:5], matrix[:5], ["never-seen"], matrix[3:4])
    assert text_only[0] != pytest.approx(scores[0])
    assert np.array_equal(scorer.score([], np.zeros((0, 384)), candidates, candidate_vectors), np.zeros(4))
    # Batched scoring equals one-by-one scoring.
    requests = [
        ScoreRequest(ids[:5], matrix[:5], candidates, candidate_vectors),
        ScoreRequest(ids[7:9], matrix[7:9], ids[:3], matrix[:3]),
        ScoreRequest([], np.zeros((0, 384)), ids[:2], matrix[:2]),
    ]
    batched = scorer.score_many(requests)
    for request, got in zip(requests, batched, strict=True):
        alone = scorer.score(
            request.history_item_ids, request.history_vectors, request.candidate_item_ids, request.candidate_vectors
        )
        np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="candidate_vectors has shape"):
        scorer.score(ids[:2], matrix[:2], ids[:3], matrix[:2])


def test_long_history_is_truncated(vectors: tuple[list[str], np.ndarray]) -> None:
    ids, matrix = vectors
    model = RankerModel(ModelConfig(n_items=len(ids), dim=16, layers=1, heads=1, max_len=4))
    scorer = RankerScorer(model=model, item_ids=tuple(ids))
    full = scorer.score(ids[:10], matrix[:10], ids[:3], matrix[:3])
    recent = scorer.score(ids[6:10], matrix[6:10], ids[:3], matrix[:3])
    np.testing.assert_array_equal(full, recent)


def test_two_runs_in_one_second_publish_two_versions(tmp_path: Path, result: TrainResult) -> None:
    # Same weights, same second (a quick retrain, or the frozen and the adapted encoder's runs): the metadata's
    # microseconds and encoder version keep the versions apart instead of failing the second publication.
    first = save_checkpoint(
        tmp_path, result, embedding_model_id="m", now=datetime(2026, 11, 28, 5, 15, 0, 1000, tzinfo=UTC)
    )
    second = save_checkpoint(
        tmp_path, result, embedding_model_id="m", now=datetime(2026, 11, 28, 5, 15, 0, 2000, tzinfo=UTC)
    )
    adapted = save_checkpoint(
        tmp_path,
        result,
        embedding_model_id="m",
        encoder_version="20261128T051400Z-0",
        now=datetime(2026, 11, 28, 5, 15, 0, 2000, tzinfo=UTC),
    )
    assert len({first.name, second.name, adapted.name}) == 3
    assert all(path.name.startswith("20261128T051500Z-") for path in (first, second, adapted))


def test_checkpoint_round_trip(tmp_path: Path, result: TrainResult, vectors: tuple[list[str], np.ndarray]) -> None:
    ids, matrix = vectors
    assert latest_checkpoint(tmp_path) is None
    older = save_checkpoint(
        tmp_path, result, embedding_model_id="all-MiniLM-L6-v2", now=datetime(2026, 11, 28, 5, 15, tzinfo=UTC)
    )
    newer = save_checkpoint(tmp_path, result, embedding_model_id="all-MiniLM-L6-v2")
    assert older.name.startswith("20261128T051500Z-")
    (tmp_path / ".tmp-incomplete").mkdir()  # an interrupted write is never picked
    assert latest_checkpoint(tmp_path) == newer

    scorer, metadata = load_scorer(older)
    assert metadata.version == older.name
    assert metadata.dataset_hash == result.dataset_hash
    assert metadata.metrics == result.metrics
    assert metadata.n_items == result.n_items and metadata.n_users == result.n_users
    assert metadata.train_config["seed"] == FAST.seed
    candidates = [*ids[10:20], "unknown-item"]
    candidate_vectors = np.concatenate([matrix[10:20], _random_vectors(["x"], seed=9)])
    expected = result.scorer().score(ids[:6], matrix[:6], candidates, candidate_vectors)
    np.testing.assert_array_equal(scorer.score(ids[:6], matrix[:6], candidates, candidate_vectors), expected)
    # The checkpoint carries the item graph and the fusion weights the service scores with.
    assert scorer.fusion == result.fusion and (scorer.graph is None) == (result.graph is None)


def test_a_checkpoint_keeps_novelty_where_a_ranker_from_before_the_term_reads_around_it(
    tmp_path: Path, result: TrainResult
) -> None:
    with_novelty = dataclasses.replace(result, fusion=dataclasses.replace(result.fusion, novelty=2.5))
    path = save_checkpoint(tmp_path, with_novelty, embedding_model_id="all-MiniLM-L6-v2")
    scorer, _ = load_scorer(path)
    assert scorer.fusion == with_novelty.fusion and scorer.fusion.novelty == 2.5
    data = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    assert set(data["fusion"]) == {"sequence", "graph", "text", "text_decay", "graph_decay"}  # what older ones take


def test_checkpoints_of_earlier_formats_still_load(
    tmp_path: Path, result: TrainResult, vectors: tuple[list[str], np.ndarray]
) -> None:
    """Format 2 kept the graph as one target x source COO matrix (int64 indices, later int32); format 1 had no graph
    or fusion weights. Both load; a format-2 checkpoint scores as the same model saved today, unknown items too."""
    ids, matrix = vectors
    assert result.graph is not None
    path = save_checkpoint(tmp_path / "now", result, embedding_model_id="m")
    current, _ = load_scorer(path)
    data = torch.load(path / "model.pt", weights_only=True)
    transposed = result.graph.transposed
    candidates = [*ids[10:20], "unknown-item"]
    candidate_vectors = np.concatenate([matrix[10:20], _random_vectors(["x"], seed=9)])
    expected = current.score(ids[:6], matrix[:6], candidates, candidate_vectors)
    for name, dtype in (("int64", torch.int64), ("int32", torch.int32)):
        graph = {
            "indices": transposed.indices().to(dtype),
            "values": transposed.values(),
            "size": torch.tensor(transposed.shape),
        }
        assert result.graph.known_text is not None
        graph["known_text"] = torch.from_numpy(result.graph.known_text)
        (tmp_path / name).mkdir()
        torch.save({**data, "format_version": 2, "graph": graph}, tmp_path / name / "model.pt")
        (tmp_path / name / "metadata.json").write_bytes((path / "metadata.json").read_bytes())
        older, _ = load_scorer(tmp_path / name)
        np.testing.assert_array_equal(older.score(ids[:6], matrix[:6], candidates, candidate_vectors), expected)
    transformer_only = {key: data[key] for key in ("model_config", "item_ids", "state_dict")}
    (tmp_path / "v1").mkdir()
    torch.save({**transformer_only, "format_version": 1}, tmp_path / "v1" / "model.pt")
    (tmp_path / "v1" / "metadata.json").write_bytes((path / "metadata.json").read_bytes())
    first, _ = load_scorer(tmp_path / "v1")
    assert first.graph is None and first.fusion == Fusion()
    assert np.all(np.isfinite(first.score(ids[:6], matrix[:6], candidates, candidate_vectors)))


def test_served_scores_equal_the_full_catalog_scores(result: TrainResult, dataset: Dataset) -> None:
    """What the service computes for a candidate list is what the offline evaluation ranks by."""
    assert result.graph is not None and result.fusion.graph > 0
    ids = [item.item_id for item in dataset.items]
    matrix = _random_vectors(ids)
    scorer = result.scorer()
    case = loo_split(dataset).test[0]
    catalog = scorer.score_catalog([case.history], ids, matrix)[0].numpy()
    chosen = [3, 1, 4, 1 + len(ids) // 2]
    served = scorer.score(
        [ids[i] for i in case.history], matrix[list(case.history)], [ids[i] for i in chosen], matrix[chosen]
    )
    np.testing.assert_allclose(served, catalog[chosen], rtol=1e-4, atol=1e-4)


def test_graph_scores_read_only_the_history_rows_and_match_the_full_product() -> None:
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(41, 41, generator=generator)
    graph = ItemGraph.from_dense(weights, keep=7)
    histories = [np.asarray([3, 5, 3, 0, 40]), np.asarray([1]), np.asarray([0])]
    decay = 0.8
    # The reference: a dense history-weight matrix (an item seen twice counts once, at its latest position)
    # times the whole graph.
    dense = graph.transposed.to_dense().T  # (source, target)
    expected = np.zeros((len(histories), 41), dtype=np.float32)
    for row, history in enumerate(histories):
        np.maximum.at(expected[row], history, recency_weights(len(history), decay))
    expected[:, 0] = 0.0
    reference = torch.from_numpy(expected) @ dense
    assert torch.allclose(graph.scores(histories, decay), reference, atol=1e-5)
    restored = ItemGraph.from_tensors(graph.to_tensors())
    assert torch.equal(restored.scores(histories, decay), graph.scores(histories, decay))


def _graph_scorer(decay: float) -> RankerScorer:
    """Five known items, the graph alone in the score: i1 -> i3 (2.0), i1 -> i4 (0.5), i2 -> i4 (1.0),
    i2 -> i5 (-1.0), i2 -> i1 (3.0)."""
    weights = torch.zeros(6, 6)  # (source, target), row and column 0 = unknown
    weights[1, 3], weights[1, 4], weights[2, 4], weights[2, 5], weights[2, 1] = 2.0, 0.5, 1.0, -1.0, 3.0
    model = RankerModel(ModelConfig(n_items=5, dim=8, layers=1, heads=1, max_len=10))
    return RankerScorer(
        model=model,
        item_ids=("i1", "i2", "i3", "i4", "i5"),
        graph=ItemGraph.from_dense(weights, keep=5),
        fusion=Fusion(sequence=0.0, graph=1.0, graph_decay=decay),
    )


def test_suggest_proposes_what_the_graph_links_to_the_history_best_first() -> None:
    scorer = _graph_scorer(decay=0.5)
    # History i1 then i2: i1 weighs 0.5, i2 1.0. i3 = 0.5 * 2.0 = 1.0, i4 = 0.5 * 0.5 + 1.0 = 1.25, i5 < 0;
    # i1 is in the history, so never proposed however strong its link.
    assert scorer.suggest(["i1", "i2"], 10) == [("i4", 1.25), ("i3", 1.0)]
    assert scorer.suggest(["i1", "i2"], 1) == [("i4", 1.25)]
    assert scorer.suggest(["unknown"], 10) == [] and scorer.suggest([], 10) == []
    assert RankerScorer(model=scorer.model, item_ids=scorer.item_ids).suggest(["i1"], 10) == []  # no graph
    unused = RankerScorer(model=scorer.model, item_ids=scorer.item_ids, graph=scorer.graph, fusion=Fusion(graph=0.0))
    assert unused.suggest(["i1"], 10) == []


def test_the_served_graph_term_uses_the_tuned_decay() -> None:
    """The decay tuned on validation is the one that scores: i1 then i2 with decay 0.5 gives i3 1.0, i4 1.25."""
    scorer = _graph_scorer(decay=0.5)
    history = np.zeros((2, 384), dtype=np.float32)
    candidates = np.zeros((2, 384), dtype=np.float32)
    scores = scorer.score(["i1", "i2"], history, ["i3", "i4"], candidates)
    np.testing.assert_allclose(scores, [1.0, 1.25], atol=1e-6)


def test_an_unknown_item_takes_the_graph_score_of_the_known_item_nearest_in_text() -> None:
    """The graph of _graph_scorer with the known items' text: a new item whose text is nearest i3's scores what
    i3 scores (1.0 for i1 then i2 at decay 0.5), one nearest i4 what i4 does (1.25), the same through
    score_many, score_catalog and a graph restored from its checkpoint tensors."""
    plain = _graph_scorer(decay=0.5)
    known_text = np.eye(5, 384, dtype=np.float32)  # item i(n + 1) along axis n
    weights = torch.zeros(6, 6)
    weights[1, 3], weights[1, 4], weights[2, 4], weights[2, 5], weights[2, 1] = 2.0, 0.5, 1.0, -1.0, 3.0
    graph = ItemGraph.from_dense(weights, keep=5, known_text=known_text)
    scorer = RankerScorer(model=plain.model, item_ids=plain.item_ids, graph=graph, fusion=plain.fusion)
    near_i3 = known_text[2] + 0.3 * known_text[0]
    near_i4 = known_text[3] + 0.2 * known_text[4]
    history = known_text[[0, 1]]
    served = scorer.score(["i1", "i2"], history, ["new-a", "new-b", "i3"], np.stack([near_i3, near_i4, known_text[2]]))
    np.testing.assert_allclose(served, [1.0, 1.25, 1.0], atol=1e-6)
    # Without the known items' text (older checkpoints) an unknown item has no graph term.
    np.testing.assert_allclose(plain.score(["i1", "i2"], history, ["new-a"], near_i3[None]), [0.0], atol=1e-6)
    catalog_ids = ["i1", "i2", "new-a", "new-b"]
    catalog = np.stack([known_text[0], known_text[1], near_i3, near_i4])
    offline = scorer.score_catalog([[0, 1]], catalog_ids, catalog)[0].numpy()
    np.testing.assert_allclose(offline[2:], [1.0, 1.25], atol=1e-6)
    restored = ItemGraph.from_tensors(graph.to_tensors())
    assert restored.known_text is not None and restored.known_text.shape == (5, 384)
    again = RankerScorer(model=plain.model, item_ids=plain.item_ids, graph=restored, fusion=plain.fusion)
    np.testing.assert_allclose(again.score(["i1", "i2"], history, ["new-a", "new-b"], catalog[2:]), [1.0, 1.25])


def test_a_history_item_takes_its_text_term_from_the_rest_of_the_history() -> None:
    """The text term alone: i1 is in the history (i1, i2), so its score is the cosine of its text to i2's alone,
    not to a profile that holds i1 itself; an item outside the history is scored against the whole profile. The
    same through score_many and score_catalog."""
    plain = _graph_scorer(decay=1.0)
    scorer = RankerScorer(model=plain.model, item_ids=plain.item_ids, fusion=Fusion(sequence=0.0, text=1.0))
    text = np.zeros((3, 384), dtype=np.float32)
    text[0, 0] = 1.0  # i1
    text[1, :2] = (0.6, 0.8)  # i2
    text[2, :2] = (1.0, 1.0)  # i3, outside the history
    profile = (text[0] + text[1]) / np.linalg.norm(text[0] + text[1])
    expected = [0.6, float(text[2] / np.linalg.norm(text[2]) @ profile)]  # cos(i1, i2), cos(i3, i1 + i2)
    served = scorer.score(["i1", "i2"], text[:2], ["i1", "i3"], text[[0, 2]])
    np.testing.assert_allclose(served, expected, atol=1e-6)
    offline = scorer.score_catalog([[0, 1]], ["i1", "i2", "i3"], text)[0].numpy()
    np.testing.assert_allclose(offline[[0, 2]], expected, atol=1e-6)
    np.testing.assert_allclose(offline[1], 0.6, atol=1e-6)  # i2 against i1 alone


def test_novelty_takes_its_weight_off_the_history_items_and_nothing_else() -> None:
    """The graph of _graph_scorer with novelty 0.75: i1 (in the history) scores 1.0 - 0.75 where i3 (outside it)
    keeps its graph score; the same through score_many and score_catalog, and a fusion without the term (every
    older checkpoint) scores as before."""
    plain = _graph_scorer(decay=1.0)
    scorer = RankerScorer(
        model=plain.model,
        item_ids=plain.item_ids,
        graph=plain.graph,
        fusion=Fusion(sequence=0.0, graph=1.0, novelty=0.75),
    )
    vectors = np.zeros((3, 384), dtype=np.float32)
    # History i2: i1 = 3.0, i4 = 1.0; history i1, i2 adds i1 -> i3 (2.0) and i1 -> i4 (0.5).
    served = scorer.score(["i1", "i2"], vectors[:2], ["i1", "i3", "i4"], vectors)
    np.testing.assert_allclose(served, [3.0 - 0.75, 2.0, 1.5], atol=1e-6)
    np.testing.assert_allclose(plain.score(["i1", "i2"], vectors[:2], ["i1", "i3", "i4"], vectors), [3.0, 2.0, 1.5])
    offline = scorer.score_catalog([[0, 1]], list(plain.item_ids), np.zeros((5, 384), dtype=np.float32))[0].numpy()
    np.testing.assert_allclose(offline[:4], [3.0 - 0.75, 0.0 - 0.75, 2.0, 1.5], atol=1e-6)
    older = {"sequence": 1.0, "graph": 0.0, "text": 0.0, "text_decay": 1.0, "graph_decay": 1.0}
    assert Fusion.from_dict(older).novelty == 0.0


def test_text_neighbours_keep_the_nearest_items_symmetric_and_non_negative() -> None:
    text = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    links = text_neighbours(text, 1).toarray()
    assert links.shape == (4, 4)
    assert np.all(np.diag(links) == 0) and np.all(links >= 0) and np.array_equal(links, links.T)
    assert links[0, 1] > 0.9 and links[2, 1] > 0  # 2's nearest is 1, so 1 links back to 2 as well
    assert links[0, 3] == 0 and links[3].sum() == 0  # opposite text: a negative cosine is not a link


def test_the_item_graph_links_items_that_read_alike_when_co_occurrence_cannot() -> None:
    # Pairs (2j, 2j+1) share a text; in training each item appears only beside a hub item, so co-occurrence
    # cannot tell a pair apart from any other item, and validation asks for the pair.
    pairs = 10
    hub = 2 * pairs
    text = np.zeros((hub + 1, hub + 1), dtype=np.float32)
    for item in range(hub + 1):
        text[item, item // 2] = 1.0
    text[:hub] += np.random.default_rng(0).normal(0, 0.01, (hub, hub + 1)).astype(np.float32)
    train = tuple((item, hub) for item in range(hub) for _ in range(3))
    val = tuple(Case(f"u{j}", (2 * j,), (2 * j + 1,)) for j in range(pairs))
    split = Split("loo", tuple(f"i{n}" for n in range(hub + 1)), train, val, val)
    weights, choice = fit_graph_weights(split, text)
    assert choice.text_neighbours > 0 and choice.text_weight > 0
    assert choice.val_ndcg > 0.5
    assert weights.shape == (hub + 1, hub + 1)
    assert all(weights[2 * j, 2 * j + 1] > weights[2 * j, 2 * ((j + 1) % pairs) + 1] for j in range(pairs))
