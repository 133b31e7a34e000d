"""Metrics against independent computations: sklearn for AP, brute force for recall/accuracy,
and the fairseq aggregation of split-level metrics over several workers' logging outputs."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from one_peace.metrics import accuracy, accuracy_sum, average_precision, mean_average_precision, recall_at_k
from one_peace.metrics.retrieval import first_match_rank, retrieval_metrics


# ---- mean average precision ------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    scores = rng.random((60, 7))
    scores[:, 3] = np.round(scores[:, 3], 1)  # many ties in one class
    targets = (rng.random((60, 7)) < 0.3).astype(int)
    targets[0, :] = 1  # every class has a positive
    for c in range(7):
        assert average_precision(scores[:, c], targets[:, c]) == pytest.approx(
            average_precision_score(targets[:, c], scores[:, c]), abs=1e-12)


def test_map_excludes_classes_without_positives():
    rng = np.random.default_rng(3)
    scores = rng.random((40, 6))
    targets = (rng.random((40, 6)) < 0.4).astype(int)
    targets[:, [1, 4]] = 0  # no positives: AP undefined
    value, num_classes = mean_average_precision(scores, targets)
    used = [c for c in range(6) if targets[:, c].any()]
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in used])
    assert num_classes == len(used) == 4
    assert value == pytest.approx(100 * expected, abs=1e-10)
    assert np.isnan(average_precision(scores[:, 1], targets[:, 1]))


def test_map_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="must be equal"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))


# ---- recall ----------------------------------------------------------------------------------
def brute_force_recall(scores, row_ids, col_ids, k):
    hits = 0
    for r in range(scores.shape[0]):
        order = np.argsort(-scores[r], kind="stable")[:k]
        hits += any(col_ids[c] == row_ids[r] for c in order)
    return 100.0 * hits / scores.shape[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_recall_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    audio_ids = np.arange(12)
    text_ids = np.repeat(np.arange(12), 3)  # 3 captions per clip
    scores = rng.standard_normal((12, 36))  # continuous: no ties
    for k in (1, 5, 10):
        got = recall_at_k(torch.tensor(scores), torch.tensor(audio_ids), torch.tensor(text_ids), ks=(k,))[k]
        assert got == pytest.approx(brute_force_recall(scores, audio_ids, text_ids, k))
        got_t2a = recall_at_k(torch.tensor(scores.T), torch.tensor(text_ids), torch.tensor(audio_ids), ks=(k,))[k]
        assert got_t2a == pytest.approx(brute_force_recall(scores.T, text_ids, audio_ids, k))


def test_exact_ties_count_against_the_model():
    """A model whose captions all embed alike must not score 100: every tie with a wrong candidate
    counts as ranked above the match."""
    # Small integers: every dot product is exact, so the six scores of an image are equal to the bit whatever
    # order the matrix multiply sums in (with random floats, BLAS's vector and remainder columns can differ in
    # the last bit, and the "ties" were broken at random: the test failed about one run in three on AVX2).
    emb = torch.randint(-4, 5, (4, 8), generator=torch.Generator().manual_seed(0)).float()
    same = emb[:1].expand(6, -1)  # six captions, one embedding
    out = retrieval_metrics(emb, torch.arange(4), same, torch.tensor([0, 0, 1, 1, 2, 3]), query_name="image")
    assert out["txt_r1"] == 0.0  # each image ties its captions with at least 2 wrong ones
    # images 0, 1: 4 wrong ties (rank 4, in the top 5); images 2, 3: 5 wrong ties (rank 5)
    assert (out["txt_r5"], out["txt_r10"]) == (pytest.approx(50.0), pytest.approx(100.0))
    ranks = first_match_rank(torch.tensor([[1.0, 1.0, 0.5]]), torch.tensor([7]), torch.tensor([3, 7, 7]))
    assert ranks.tolist() == [1]  # one wrong candidate ties the match; the second match does not count


def test_retrieval_metrics_keys_and_rows_without_match():
    emb = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    ids = torch.tensor([0, 1, 2, 3, -1])  # the last clip has no caption: always a miss
    out = retrieval_metrics(emb, ids, emb[:4], torch.arange(4), query_name="audio")
    recalls = {"txt_r1", "txt_r5", "txt_r10", "audio_r1", "audio_r5", "audio_r10"}
    assert set(out) == recalls | {"r_mean", "txt_r_mean", "audio_r_mean", "txt_count", "audio_count"}
    assert out["txt_r1"] == pytest.approx(80.0)  # 4 of 5 clips find their own caption first
    assert out["audio_r1"] == pytest.approx(100.0)
    assert out["r_mean"] == pytest.approx(np.mean([out[k] for k in recalls]))
    assert out["r_mean"] == pytest.approx((out["txt_r_mean"] + out["audio_r_mean"]) / 2)  # the official definition
    assert (out["txt_count"], out["audio_count"]) == (4, 5)


# ---- accuracy --------------------------------------------------------------------------------
def test_accuracy_hard_and_soft_targets():
    logits = torch.tensor([[0.1, 2.0, 0.3], [1.0, 0.0, 0.5], [0.0, 0.1, 0.2]])
    assert accuracy_sum(logits, torch.tensor([1, 2, 2])) == (2.0, 3)
    assert accuracy(logits, torch.tensor([1, 2, 2])) == pytest.approx(200 / 3)
    soft = torch.tensor([[0.0, 0.3, 1.0], [0.6, 0.0, 0.0], [0.0, 0.0, 0.9]])
    score, count = accuracy_sum(logits, soft)  # target value at the arg-max: 0.3 + 0.6 + 0.9
    assert count == 3 and score == pytest.approx(1.8)
    with pytest.raises(ValueError):
        accuracy_sum(logits, torch.zeros(3, 2))


# ---- aggregation over workers ----------------------------------------------------------------
def aggregate(reduce, logs):
    from fairseq import metrics

    with metrics.aggregate(new_root=True) as agg:
        reduce(logs)
        return agg.get_smoothed_values()


def test_accuracy_aggregates_sums_over_workers():
    from one_peace.fairseq_glue.metric_logging import log_accuracy

    logs = [{"_acc_score": 3.0, "_acc_cnt": 4}, {"_acc_score": 0.0, "_acc_cnt": 1}, {"_acc_score": 1.0, "_acc_cnt": 3}]
    assert aggregate(log_accuracy, logs)["accuracy"] == pytest.approx(50.0)


def test_map_over_worker_logs_equals_whole_split():
    from one_peace.fairseq_glue.metric_logging import concatenated, log_arrays, log_split_metrics

    rng = np.random.default_rng(5)
    scores = torch.tensor(rng.random((30, 5)), dtype=torch.float32)
    targets = torch.tensor(rng.random((30, 5)) < 0.3, dtype=torch.uint8)
    targets[0] = 1
    logs = [{"s": scores[a:b], "t": targets[a:b]} for a, b in ((0, 7), (7, 8), (8, 30))]  # unequal shares

    def reduce(logs):
        log_arrays(logs, ("s", "t"))
        log_split_metrics(("map",), lambda m: {"map": mean_average_precision(
            concatenated(m, "s").numpy(), concatenated(m, "t").numpy())[0]}, cache_key="s")

    assert aggregate(reduce, logs)["map"] == pytest.approx(mean_average_precision(scores.numpy(), targets.numpy())[0])
