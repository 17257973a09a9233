"""Matching and scores against confusion matrices worked out by hand."""

import numpy as np
import pytest

from pipeline import metrics as M


def test_confusion_matrix_drops_ignore_pixels():
    clusters = np.array([[0, 1, 2], [2, 1, 0]])
    labels = np.array([[1, 0, 255], [1, 0, 1]])
    conf = M.confusion_matrix(clusters, labels, num_clusters=3, num_classes=2, ignore_index=255)
    np.testing.assert_array_equal(conf, [[0, 2], [2, 0], [0, 1]])


def test_majority_vote_lets_several_clusters_share_a_class():
    # clusters 0 and 1 both live on class 0; cluster 2 on class 1
    conf = np.array([[50, 0], [30, 2], [0, 18]])
    mapping = M.majority_vote(conf)
    np.testing.assert_array_equal(mapping, [0, 0, 1])
    s = M.scores(conf, mapping)
    assert s["acc"] == pytest.approx(98 / 100)
    # class 0: TP 80, GT 80, predicted 82 -> 80/82 ; class 1: TP 18, GT 20, predicted 18 -> 18/20
    assert s["iou"] == pytest.approx([80 / 82, 18 / 20])
    assert s["miou"] == pytest.approx((80 / 82 + 18 / 20) / 2)


def test_majority_vote_uses_iou_not_counts():
    # cluster 0 holds 40 px of the huge class 0 and 30 px of the small class 1 (all of it):
    # counts say class 0, IoU says class 1 (30/40 = 0.75 vs 40/(70+1000-40) = 0.039)
    conf = np.array([[40, 30], [960, 0]])
    np.testing.assert_array_equal(M.majority_vote(conf), [1, 0])


def test_hungarian_leaves_extra_clusters_unmatched_and_counts_them_wrong():
    conf = np.array([[10, 0], [8, 0], [0, 5]])
    mapping = M.hungarian(conf)
    np.testing.assert_array_equal(mapping, [0, M.UNMATCHED, 1])
    s = M.scores(conf, mapping)
    assert s["acc"] == pytest.approx(15 / 23)
    # class 0: TP 10, GT 18, predicted 10 -> 10/18 ; class 1: 5/5
    assert s["iou"] == pytest.approx([10 / 18, 1.0])


def test_unmatched_cluster_is_not_sent_to_class_zero():
    conf = np.array([[0, 10], [7, 0], [3, 0]])  # K=3, C=2
    mapping = M.hungarian(conf)
    assert sorted(mapping.tolist()) == [M.UNMATCHED, 0, 1]
    assert mapping[2] == M.UNMATCHED  # cluster 2 (3 px of class 0) loses to cluster 1
    s = M.scores(conf, mapping)
    assert s["iou"][0] == pytest.approx(7 / 10)


def test_absent_class_is_left_out_of_miou():
    # class 2 appears neither in ground truth nor in the prediction
    conf = np.array([[6, 0, 0], [1, 3, 0]])
    s = M.scores(conf, M.majority_vote(conf))
    assert np.isnan(s["iou"][2])
    # class 0: TP 6, GT 7, predicted 6 -> 6/7 ; class 1: TP 3, GT 3, predicted 4 -> 3/4
    assert s["miou"] == pytest.approx((6 / 7 + 3 / 4) / 2)


def test_predicted_but_absent_class_counts_as_zero_iou():
    # Hungarian with K = C = 2 pairs cluster 1 with class 1, which has no pixels: IoU 0, counted
    conf = np.array([[5, 0], [2, 0]])
    s = M.scores(conf, M.hungarian(conf))
    assert s["iou"] == pytest.approx([5 / 7, 0.0])
    assert s["miou"] == pytest.approx(5 / 14)


def test_remap_sends_unmatched_to_fill():
    clusters = np.array([[0, 1], [2, 2]])
    out = M.remap(clusters, np.array([3, M.UNMATCHED, 0]), fill=255)
    np.testing.assert_array_equal(out, [[3, 255], [0, 0]])


def test_partition_anatomy_counts_split_classes_and_balance():
    # class 0 (10 px) split over clusters 0 and 1; class 1 (4 px) mostly in cluster 2; cluster 3 empty
    conf = np.array([[6, 0], [4, 1], [0, 3], [0, 0]])
    a = M.partition_anatomy(conf)
    assert a["clusters_per_class"] == [2, 1]  # cluster 1: IoU 4/11 with class 0 against 1/8 with class 1
    assert a["best_cluster_iou"] == pytest.approx([6 / 10, 3 / 4])

    def perplexity(counts):
        p = np.array(counts, dtype=float) / sum(counts)
        return float(np.exp(-(p * np.log(p)).sum()))

    assert a["cluster_perplexity"] == pytest.approx(perplexity([6, 5, 3]))
    assert a["class_perplexity"] == pytest.approx(perplexity([10, 4]))
