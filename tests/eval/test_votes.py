"""Neighbour vote aggregation: a hand-made example, ties, weighting, and the vectorised form against the loop."""

from __future__ import annotations

import numpy as np
import pytest

from exiflang.eval.index.votes import plurality, vote_classes, vote_tags

# Five neighbours of one query, most similar first, and their EXIF.
NEIGHBOURS = [
    {"Make": "Canon", "Model": "EOS 20D", "ISO Speed Ratings": "100"},
    {"Make": "NIKON", "Model": "D70", "ISO Speed Ratings": "200"},
    {"Make": "Canon", "Model": "EOS 350D", "ISO Speed Ratings": "200"},
    {"Make": "NIKON", "Model": "D70"},
    {"Make": "Canon ", "Model": "EOS 20D"},  # trailing space, as some cameras write it
]
SIMS = [0.9, 0.8, 0.7, 0.6, 0.2]


def test_hand_made_example_unweighted():
    votes = vote_tags(NEIGHBOURS, SIMS, ["Make", "Model", "ISO Speed Ratings", "Software"])
    make = votes["Make"]
    assert (make.value, make.votes, make.cast, make.n_with_tag) == ("Canon", 3.0, 5.0, 5)
    assert make.share == pytest.approx(0.6)
    assert make.similarity == pytest.approx(0.9 + 0.7 + 0.2)
    # Model: "EOS 20D" (0.9 + 0.2 = 1.1) and "D70" (0.8 + 0.6 = 1.4) have two votes each:
    # the tie goes to the higher summed similarity.
    model = votes["Model"]
    assert (model.value, model.votes, model.cast) == ("D70", 2.0, 5.0)
    assert model.share == pytest.approx(0.4)
    # ISO: 3 neighbours have it; "200" has 2 of their 3 votes.
    iso = votes["ISO Speed Ratings"]
    assert (iso.value, iso.n_with_tag) == ("200", 3)
    assert iso.share == pytest.approx(2 / 3)
    # Nobody has Software: no prediction, nothing cast.
    sw = votes["Software"]
    assert sw.value is None and sw.n_with_tag == 0 and sw.share == 0.0


def test_hand_made_example_weighted():
    votes = vote_tags(NEIGHBOURS, SIMS, ["Make", "Model"], weighted=True)
    # Canon 0.9 + 0.7 + 0.2 = 1.8 of 3.2; NIKON 1.4.
    assert votes["Make"].value == "Canon"
    assert votes["Make"].share == pytest.approx(1.8 / 3.2)
    # Model weighted: EOS 20D 1.1, D70 1.4, EOS 350D 0.7.
    assert votes["Model"].value == "D70"
    assert votes["Model"].share == pytest.approx(1.4 / 3.2)


def test_weighting_changes_the_winner():
    labels = ["a", "b", "b"]
    sims = [0.95, 0.3, 0.3]
    assert plurality(labels, sims).value == "b"
    assert plurality(labels, sims, weighted=True).value == "a"


def test_exact_tie_goes_to_the_smaller_value():
    vote = plurality(["zeta", "alpha"], [0.5, 0.5])
    assert vote.value == "alpha" and vote.share == pytest.approx(0.5)


def test_negative_similarities_fall_back_to_counting():
    vote = plurality(["x", "y", "y"], [-0.1, -0.3, -0.2], weighted=True)
    assert vote.value == "y" and vote.cast == 3.0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        plurality(["a"], [0.1, 0.2])


def _reference(classes: np.ndarray, sims: np.ndarray, weighted: bool) -> tuple[np.ndarray, np.ndarray]:
    pred, share = [], []
    for row, srow in zip(classes, sims):
        vote = plurality([None if c < 0 else int(c) for c in row], srow.tolist(), weighted)
        pred.append(-1 if vote.value is None else vote.value)
        share.append(vote.share)
    return np.asarray(pred), np.asarray(share)


@pytest.mark.parametrize("weighted", [False, True])
def test_vectorised_matches_the_loop(weighted):
    rng = np.random.default_rng(0)
    q, k, c = 400, 10, 5
    classes = rng.integers(-1, c, size=(q, k))
    classes[:7] = -1  # queries nobody votes for
    sims = np.round(rng.uniform(-0.3, 1.0, size=(q, k)), 1)  # coarse values: many exact ties
    sims[7:12] = -0.5  # all-negative rows: the counting fall-back
    pred, share = vote_classes(classes, sims, c, weighted=weighted)
    ref_pred, ref_share = _reference(classes, sims, weighted)
    np.testing.assert_array_equal(pred, ref_pred)
    np.testing.assert_allclose(share, ref_share, rtol=0, atol=1e-12)
    assert (pred[:7] == -1).all() and (share[:7] == 0).all()


def test_vectorised_hand_made():
    classes = np.array([[0, 1, 1, -1], [2, 0, 2, 0], [-1, -1, -1, -1]])
    sims = np.array([[0.9, 0.5, 0.4, 0.99], [0.1, 0.9, 0.1, 0.8], [0.5, 0.5, 0.5, 0.5]])
    pred, share = vote_classes(classes, sims, 3)
    # row 0: class 1 has 2 of 3 votes; row 1: 2-2 tie, class 0 has the higher summed similarity.
    np.testing.assert_array_equal(pred, [1, 0, -1])
    np.testing.assert_allclose(share, [2 / 3, 0.5, 0.0])


def test_vectorised_rejects_bad_shapes():
    with pytest.raises(ValueError):
        vote_classes(np.zeros((2, 3), int), np.zeros((2, 4)), 2)
    with pytest.raises(ValueError):
        vote_classes(np.full((1, 2), 5), np.zeros((1, 2)), 2)
