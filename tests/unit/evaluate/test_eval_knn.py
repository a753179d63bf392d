"""kNN balanced accuracy (Lu 2019): hand-computed cases, tie handling, one search for all k."""

from __future__ import annotations

import numpy as np
import pytest

from cellrep_ml.evaluate import knn_balanced_accuracy, leave_one_out_neighbors


def test_four_points_by_hand() -> None:
    # x = 0, 1, 3, 7; labels a a b b.
    # k=1: 0->1 (a ok), 1->0 (a ok), 3->1 (a, wrong), 7->3 (b ok): recalls a 1, b 1/2 -> 0.75
    # k=2: 0->{1 a, 3 b} tie, a voted first -> a ok; 1->{0 a, 3 b} -> a ok;
    #      3->{1 a, 0 a} -> a wrong; 7->{3 b, 1 a} tie -> b ok: 0.75
    # k=3: every cell sees the other three: majority is the other class -> 0
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    got = knn_balanced_accuracy(x, ["a", "a", "b", "b"], ks=(1, 2, 3), zscore=False)
    assert got == pytest.approx({1: 0.75, 2: 0.75, 3: 0.0})


def test_balanced_accuracy_weights_classes_equally() -> None:
    # 9 cells of class a clustered, 1 lonely b far away: 1-NN gets every a right and the
    # b wrong; plain accuracy 0.9, balanced accuracy (1 + 0) / 2 = 0.5.
    x = np.concatenate([np.linspace(0, 1, 9), [5.0]])[:, None]
    y = ["a"] * 9 + ["b"]
    assert knn_balanced_accuracy(x, y, ks=(1,), zscore=False)[1] == pytest.approx(0.5)


def test_distance_ties_are_broken_by_row_index() -> None:
    x = np.array([[0.0], [1.0], [-1.0], [5.0]])
    nbr = leave_one_out_neighbors(x, 3)
    assert nbr[0].tolist() == [1, 2, 3]  # rows 1 and 2 are both at distance 1


def test_neighbors_never_include_self_even_with_duplicates() -> None:
    x = np.zeros((6, 3))
    nbr = leave_one_out_neighbors(x, 5)
    for i in range(6):
        assert i not in nbr[i]
        assert nbr[i].tolist() == [j for j in range(6) if j != i]


def test_neighbors_match_a_full_sort() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(70, 5))
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(d, np.inf)
    expected = np.argsort(d, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(leave_one_out_neighbors(x, 7), expected)


def test_zscore_makes_the_score_scale_invariant() -> None:
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], 20)
    x = rng.normal(size=(60, 4)) + y[:, None]
    scaled = x * np.array([1.0, 1000.0, 0.001, 5.0])
    a = knn_balanced_accuracy(x, y, ks=(1, 5))
    b = knn_balanced_accuracy(scaled, y, ks=(1, 5))
    assert a == pytest.approx(b)


def test_invalid_ks_and_single_class_rejected() -> None:
    x = np.arange(10.0)[:, None]
    with pytest.raises(ValueError, match="ks"):
        knn_balanced_accuracy(x, [0, 1] * 5, ks=(10,))
    with pytest.raises(ValueError, match="labels"):
        knn_balanced_accuracy(x, [0] * 10, ks=(1,))
    with pytest.raises(ValueError, match="labels"):
        knn_balanced_accuracy(x, [0, 1] * 4, ks=(1,))
