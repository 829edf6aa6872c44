import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from hierpipe.core.errors import HierpipeError
from hierpipe.evaluation.metrics import nearest_neighbours, retrieval, retrieval_metrics

A, B, C = 0, 1, 2


@pytest.fixture(autouse=True, params=["tensor operations", "CPU kernel"])
def sweep_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on both ways of counting a block: tensor operations (any device), and the
    CPU kernel of closer_counts_cpu, which only sweeps of 2^24 pairs take by default."""
    if request.param == "CPU kernel":
        monkeypatch.setattr(retrieval, "_COMPILED_PAIRS", 0)
    return request.param


def test_the_sweep_takes_the_path_it_is_tested_on(sweep_path: str, monkeypatch: pytest.MonkeyPatch):
    taken = []
    compiled = retrieval._compiled_sweep
    monkeypatch.setattr(
        retrieval, "_compiled_sweep", lambda *args: taken.append(compiled(*args)) or taken[-1]
    )
    x = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    retrieval_metrics(x, np.arange(30) % 3, ks=(1,))
    assert taken == [sweep_path == "CPU kernel"]
    # blocks other than float32 (float16 searches in float16), and too many own counts, go to
    # tensor operations
    retrieval_metrics(x.astype(np.float16), np.arange(30) % 3, ks=(1,), dtype=torch.float16)
    monkeypatch.setattr(retrieval, "_KERNEL_COUNTS", 0)
    retrieval_metrics(x, np.arange(30) % 3, ks=(1,))
    assert taken[1:] == [False, False]


def _line(*positions: float) -> np.ndarray:
    return np.array(positions, dtype=np.float64)[:, None]


def _assert_fractions(got: dict[str, float], expected: dict[str, Fraction]) -> None:
    for key, value in expected.items():
        assert got[key] == pytest.approx(float(value), abs=1e-12), key


def test_hand_case_on_a_line_same_source():
    # Neighbour orders by hand (self excluded; C at 12 is alone, so it is left out):
    #   0 (A): 1A 3B 4.5A 10B 12C   R=2  hit@1  R-prec 1/2  MAP@R 1/2
    #   1 (A): 0A 3B 4.5A 10B 12C   R=2  hit@1  R-prec 1/2  MAP@R 1/2
    #   3 (B): 4.5A 1A 0A 10B 12C   R=1  first hit at 4        0
    #   4.5 (A): 3B 1A 10B 0A 12C   R=2  first hit at 2  R-prec 1/2  MAP@R (1/2)(1/2)
    #   10 (B): 12C 4.5A 3B 1A 0A   R=1  first hit at 3        0
    x = _line(0, 1, 3, 4.5, 10, 12)
    labels = np.array([A, A, B, A, B, C])
    got = retrieval_metrics(x, labels, ks=(1, 2, 4), distance="euclidean")
    _assert_fractions(
        got,
        {
            "recall@1": Fraction(2, 5),
            "recall@2": Fraction(3, 5),
            "recall@4": Fraction(1),
            "precision@1": Fraction(2, 5),
            "r_precision": Fraction(3, 10),
            "map@r": Fraction(1, 4),
        },
    )
    assert set(got) == {"recall@1", "recall@2", "recall@4", "precision@1", "r_precision", "map@r"}


def test_hand_case_on_a_line_separate_reference():
    #   query 0 (A): ref 1B 2A 3A 11C   R=2  first hit at 2  R-prec 1/2  MAP@R 1/4
    #   query 10 (B): ref 11C 3A 2A 1B  R=1  first hit at 4  R-prec 0    MAP@R 0
    got = retrieval_metrics(
        _line(0, 10),
        np.array([A, B]),
        _line(1, 2, 3, 11),
        np.array([B, A, A, C]),
        ks=(1, 2, 4),
        distance="euclidean",
    )
    _assert_fractions(
        got,
        {
            "recall@1": Fraction(0),
            "recall@2": Fraction(1, 2),
            "recall@4": Fraction(1),
            "precision@1": Fraction(0),
            "r_precision": Fraction(1, 4),
            "map@r": Fraction(1, 8),
        },
    )


def test_self_is_excluded_by_index_so_duplicates_count():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    got = retrieval_metrics(x, np.array([A, A, B, B]), ks=(1,))
    assert got == {"recall@1": 1.0, "precision@1": 1.0, "r_precision": 1.0, "map@r": 1.0}


def test_k_beyond_the_reference_set_is_clamped():
    got = retrieval_metrics(_line(0, 1, 5), np.array([A, B, A]), ks=(1, 100), distance="euclidean")
    assert got["recall@100"] == 1.0
    assert got["recall@1"] == 0.0


def test_all_lone_queries_give_nan():
    got = retrieval_metrics(_line(0, 1, 2), np.array([A, B, C]), ks=(1,), distance="euclidean")
    assert all(math.isnan(v) for v in got.values())
    single = retrieval_metrics(_line(0), np.array([A]), ks=(1,))
    assert all(math.isnan(v) for v in single.values())


def _pml(query, query_labels, reference=None, reference_labels=None) -> dict[str, float]:
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
        knn_func=CustomKNN(CosineSimilarity()),
        device=torch.device("cpu"),
    )
    out = calc.get_accuracy(query, query_labels, reference, reference_labels)
    return {
        "precision@1": out["precision_at_1"],
        "r_precision": out["r_precision"],
        "map@r": out["mean_average_precision_at_r"],
    }


def _brute_force_recall(query, query_labels, reference, reference_labels, ks, same_source):
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    rn = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    dist = 1.0 - qn @ rn.T
    if same_source:
        np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1)
    same = reference_labels[order] == query_labels[:, None]
    if same_source:
        same = same[:, :-1]  # the last column is the query itself
    scored = same.any(axis=1)  # queries with at least one relevant reference
    return {f"recall@{k}": same[scored, :k].any(axis=1).mean() for k in ks}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 12, size=300)
    labels[0] = 12  # a class with a single member: a lone query
    centres = rng.normal(size=(13, 16))
    x = centres[labels] + 1.0 * rng.normal(size=(300, 16))
    return x.astype(np.float32), labels


def test_same_source_matches_pml_and_brute_force(data):
    x, labels = data
    ks = (1, 2, 4, 8, 16)
    got = retrieval_metrics(x, labels, ks=ks)
    expected = _pml(x, labels) | _brute_force_recall(x, labels, x, labels, ks, True)
    assert got == pytest.approx(expected, abs=1e-9)
    # Guard against a trivial comparison: the values are far from 0 and 1.
    assert 0.2 < got["map@r"] < 0.8
    assert got["recall@1"] == pytest.approx(got["precision@1"])


def test_separate_reference_matches_pml_and_brute_force(data):
    x, labels = data
    query, query_labels = x[:100], labels[:100]  # includes the class-12 item, absent below
    reference, reference_labels = x[100:], labels[100:]
    ks = (1, 4, 32)
    got = retrieval_metrics(query, query_labels, reference, reference_labels, ks=ks)
    expected = _pml(query, query_labels, reference, reference_labels)
    expected |= _brute_force_recall(query, query_labels, reference, reference_labels, ks, False)
    assert got == pytest.approx(expected, abs=1e-9)


def test_chunking_does_not_change_the_result(data):
    x, labels = data
    whole = retrieval_metrics(x, labels, chunk_size=10_000)
    assert retrieval_metrics(x, labels, chunk_size=7) == pytest.approx(whole, abs=1e-12)
    whole_ref = retrieval_metrics(x[:50], labels[:50], x[50:], labels[50:], chunk_size=10_000)
    chunked_ref = retrieval_metrics(x[:50], labels[:50], x[50:], labels[50:], chunk_size=3)
    assert chunked_ref == pytest.approx(whole_ref, abs=1e-12)


def test_numpy_and_torch_inputs_agree(data):
    x, labels = data
    assert retrieval_metrics(torch.from_numpy(x), torch.from_numpy(labels)) == pytest.approx(
        retrieval_metrics(x, labels), abs=1e-12
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query": np.zeros((0, 3))}, "query: expected a non-empty"),
        ({"query": np.zeros(4)}, "query: expected a non-empty"),
        ({"query_labels": np.zeros(3, dtype=int)}, r"query_labels: expected shape \(4,\)"),
        ({"query_labels": np.zeros(4)}, "query_labels: expected integer"),
        ({"query": np.array([[0.0, 1.0]] * 3 + [[np.nan, 1.0]])}, "query: expected finite"),
        ({"query": np.array([[0.0, 1.0]] * 3 + [[np.inf, 1.0]])}, "query: expected finite"),
        ({"ks": (1, 0)}, "ks: expected an integer >= 1, got 0"),
        ({"ks": ()}, "ks: expected at least one k"),
        ({"distance": "manhattan"}, "distance: unknown 'manhattan'"),
        ({"chunk_size": 0}, "chunk_size: expected an integer >= 1"),
        ({"reference": np.ones((2, 2))}, "reference_labels: expected labels"),
        ({"reference_labels": np.zeros(2, dtype=int)}, "reference_labels: expected None"),
        ({"reference": np.ones((2, 3)), "reference_labels": np.zeros(2, dtype=int)}, "dimension"),
        ({"reference": np.ones((2, 2)), "reference_labels": np.zeros(3, dtype=int)}, r"\(2,\)"),
        ({"query": [[0.0, 1.0]] * 4}, "query: expected a NumPy array or torch tensor, got list"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"query": np.eye(4, 2), "query_labels": np.array([A, A, B, B])} | kwargs
    with pytest.raises(HierpipeError, match=match):
        retrieval_metrics(**args)


def test_finite_embeddings_whose_sum_overflows_are_accepted():
    # the finiteness check sums first: a sum past float32's largest number must not be taken
    # for an Inf in the data, and an Inf that such a sum hides must still be found
    huge = np.full((4, 2), 3e38, np.float32)
    assert not np.isfinite(torch.from_numpy(huge).sum().item())
    query, _ = retrieval.search_space(huge, None, "euclidean", None, 16, None)
    assert torch.equal(query, torch.from_numpy(huge))
    huge[2, 1] = np.inf
    with pytest.raises(HierpipeError, match="query: expected finite values"):
        retrieval.search_space(huge, None, "euclidean", None, 16, None)


@pytest.mark.parametrize("distance", ["cosine", "chord", "euclidean"])
def test_nearest_neighbours_match_argsort(data, distance):
    x = data[0].astype(np.float64)
    if distance == "euclidean":
        dist = np.linalg.norm(x[:, None] - x[None], axis=-1)
    else:
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        dist = 1.0 - xn @ xn.T  # chord is monotone in the cosine distance
    same = np.array(dist)
    np.fill_diagonal(same, np.inf)
    got = nearest_neighbours(x, 7, distance=distance, chunk_size=64, dtype=torch.float64)
    np.testing.assert_array_equal(got, np.argsort(same, axis=1)[:, :7])
    got_ref = nearest_neighbours(x[:30], 5, x[30:], distance=distance, dtype=torch.float64)
    np.testing.assert_array_equal(got_ref, np.argsort(dist[:30, 30:], axis=1)[:, :5])


def test_nearest_neighbours_exclude_self_by_index_and_chunking(data):
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert nearest_neighbours(x, 1).tolist() == [[1], [0], [0]]
    whole = nearest_neighbours(data[0], 4, chunk_size=10_000)
    np.testing.assert_array_equal(nearest_neighbours(data[0], 4, chunk_size=7), whole)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 4}, r"k: expected at most 3 \(the available references\)"),
        ({"k": 3, "reference": np.ones((2, 2))}, "k: expected at most 2"),
        ({"k": 0}, "k: expected an integer >= 1"),
        ({"distance": "manhattan"}, "distance: unknown"),
        ({"chunk_size": 0}, "chunk_size: expected an integer >= 1"),
        ({"reference": np.ones((2, 3))}, "reference: expected dimension 2"),
    ],
)
def test_nearest_neighbours_bad_input(kwargs, match):
    with pytest.raises(HierpipeError, match=match):
        nearest_neighbours(**({"query": np.eye(4, 2), "k": 1} | kwargs))


# --- Poincaré distance (HIER's hier/helpers.py ranks by negative Poincaré distance) ---


def _poincare_loop(a: np.ndarray, b: np.ndarray, c: float) -> float:
    """hyptorch's (2/sqrt(c)) artanh(sqrt(c) ||(-a) (+)_c b||) for one pair, in float64."""
    ab, a2, b2 = -float(a @ b), float(a @ a), float(b @ b)
    mobius = ((1 + 2 * c * ab + c * b2) * -a + (1 - c * a2) * b) / (
        1 + 2 * c * ab + c * c * a2 * b2
    )
    return 2 / math.sqrt(c) * math.atanh(math.sqrt(c) * float(np.linalg.norm(mobius)))


def _brute_force_metrics(dist, query_labels, reference_labels, ks, same_source):
    """Every metric from a full distance matrix, query by query (ties broken by index)."""
    values = {f"recall@{k}": [] for k in ks} | {"precision@1": [], "r_precision": [], "map@r": []}
    for i, row in enumerate(dist):
        order = [j for j in np.argsort(row, kind="stable") if not (same_source and j == i)]
        hits = [reference_labels[j] == query_labels[i] for j in order]
        r = sum(hits)
        if r == 0:
            continue
        for k in ks:
            values[f"recall@{k}"].append(any(hits[:k]))
        values["precision@1"].append(hits[0])
        values["r_precision"].append(sum(hits[:r]) / r)
        precisions = [sum(hits[: n + 1]) / (n + 1) for n in range(r) if hits[n]]
        values["map@r"].append(sum(precisions) / r)
    return {name: float(np.mean(v)) for name, v in values.items()}


@pytest.fixture(scope="module")
def ball_data(data) -> tuple[np.ndarray, np.ndarray, float]:
    x, labels = data
    c = 0.5
    # to the ball by exp_0, with norms spread from the centre to close to the boundary
    norm = np.linalg.norm(x, axis=1, keepdims=True).astype(np.float64)
    radius = np.tanh(np.sqrt(c) * norm * np.linspace(0.1, 3.0, len(x))[:, None]) / np.sqrt(c)
    return x / norm * radius * (1 - 1e-3), labels, c


def test_poincare_retrieval_matches_a_float64_brute_force_loop(ball_data):
    x, labels, c = ball_data
    dist = np.array([[_poincare_loop(a, b, c) for b in x] for a in x])
    ks = (1, 2, 4, 8, 16)
    got = retrieval_metrics(x, labels, ks=ks, distance="poincare", curvature=c, chunk_size=37)
    expected = _brute_force_metrics(dist, labels, labels, ks, same_source=True)
    assert got == pytest.approx(expected, abs=1e-12)
    # the hyperbolic ranking is not the cosine one on these points
    assert got != pytest.approx(retrieval_metrics(x, labels, ks=ks), abs=1e-6)

    query, reference = x[:100], x[100:]
    got = retrieval_metrics(
        query, labels[:100], reference, labels[100:], ks=ks, distance="poincare", curvature=c
    )
    expected = _brute_force_metrics(dist[:100, 100:], labels[:100], labels[100:], ks, False)
    assert got == pytest.approx(expected, abs=1e-12)

    neighbours = nearest_neighbours(x, 5, distance="poincare", curvature=c, chunk_size=11)
    same = np.array(dist)
    np.fill_diagonal(same, np.inf)
    np.testing.assert_array_equal(neighbours, np.argsort(same, axis=1)[:, :5])


def test_poincare_retrieval_is_float64_by_default():
    # two references 1e-12 apart in norm near the boundary: equal in float32, not in float64
    c = 0.1
    direction = np.array([[0.6, 0.8]])
    radius = (1 - 1e-3) / math.sqrt(c)
    reference = np.concatenate([direction * radius, direction * radius * (1 - 1e-12)])
    query = np.zeros((1, 2))
    got = nearest_neighbours(query, 1, reference, distance="poincare", curvature=c)
    assert got.tolist() == [[1]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"distance": "poincare"}, "curvature: required for distance 'poincare'"),
        ({"distance": "poincare", "curvature": 0.0}, r"curvature: must be > 0, got 0\.0"),
        ({"curvature": 0.1}, "curvature: only applies to distance 'poincare'"),
        (
            {"distance": "poincare", "curvature": 4.0},
            r"query: expected finite points strictly inside the Poincaré ball",
        ),
    ],
)
def test_poincare_bad_input(kwargs, match):
    args = {"query": np.eye(4, 2) * 0.9, "query_labels": np.array([A, A, B, B])} | kwargs
    with pytest.raises(HierpipeError, match=match):
        retrieval_metrics(**args)
    with pytest.raises(HierpipeError, match=match):
        nearest_neighbours(**({"query": args["query"], "k": 1} | kwargs))


@pytest.fixture(scope="module")
def sweep_case(ball_data) -> tuple[np.ndarray, np.ndarray, float, dict[str, np.ndarray]]:
    """160 ball points and their distance matrices, float64 brute force."""
    x, labels, c = ball_data
    x, labels = x[:160], labels[:160]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = {
        "poincare": np.array([[_poincare_loop(a, b, c) for b in x] for a in x]),
        "cosine": 1.0 - unit @ unit.T,
        "euclidean": np.linalg.norm(x[:, None] - x[None], axis=-1),
    }
    return x, labels, c, dist


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "poincare"])
@pytest.mark.parametrize("chunk_size", [7, 63, 64, 65, 130])
def test_block_sweep_matches_brute_force_at_any_block_size(sweep_case, distance, chunk_size):
    # block edges below, at and past the 64-reference tiles, on both sides of the diagonal
    x, labels, c, dist = sweep_case
    space = {"distance": distance, "curvature": c if distance == "poincare" else None}
    ks = (1, 3, 50, 159)
    got = retrieval_metrics(x, labels, ks=ks, chunk_size=chunk_size, dtype=torch.float64, **space)
    expected = _brute_force_metrics(dist[distance], labels, labels, ks, True)
    assert got == pytest.approx(expected, abs=1e-12)
    got = retrieval_metrics(
        x[:70], labels[:70], x[70:], labels[70:], ks=ks, chunk_size=chunk_size, **space
    )
    expected = _brute_force_metrics(dist[distance][:70, 70:], labels[:70], labels[70:], ks, False)
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("relevant_nearer", [True, False])
def test_poincare_retrieval_decides_float32_ties_in_float64(relevant_nearer):
    # The references lie 1e-12 apart in norm near the boundary: one float32 key, so the
    # float32 search alone would rank the relevant one first either way (ties go to it).
    c = 0.1
    direction = np.array([[0.6, 0.8]])
    radius = (1 - 1e-3) / math.sqrt(c)
    near, far = direction * radius * (1 - 1e-12), direction * radius
    relevant, irrelevant = (near, far) if relevant_nearer else (far, near)
    got = retrieval_metrics(
        np.zeros((1, 2)),
        np.array([A]),
        np.concatenate([irrelevant, relevant]),
        np.array([B, A]),
        ks=(1,),
        distance="poincare",
        curvature=c,
    )
    assert got["precision@1"] == float(relevant_nearer)
    assert got["map@r"] == (1.0 if relevant_nearer else 0.0)


def test_a_reference_as_close_as_a_relevant_one_ranks_after_it():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = retrieval_metrics(x[:1], np.array([A]), x[1:], np.array([B, A, B]), ks=(1,))
    assert got == {"recall@1": 1.0, "precision@1": 1.0, "r_precision": 1.0, "map@r": 1.0}
