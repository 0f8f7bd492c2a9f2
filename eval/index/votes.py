"""Neighbour votes: per tag, the plurality value among the k nearest photos and its vote share.

Each neighbour that has the tag casts one vote for its value, or, with ``weighted=True``, a vote
of weight ``max(similarity, 0)`` (a neighbour less similar than orthogonal carries nothing; when
every voter of a tag has similarity <= 0 the tag falls back to one vote each, so a prediction
is still made).  The predicted value has the most votes; ``share`` = its votes / all votes cast
(0..1).  Ties go to the value whose voters have the higher summed similarity, then to the
smaller value (string order for raw values, class id for classes): deterministic for any input.

:func:`plurality` is the reference for one list of labels; :func:`vote_tags` applies it to the
raw EXIF of a photo's neighbours (``exiflang lookup``); :func:`vote_classes` is the vectorised
form over many queries' class ids (``exiflang eval-tags``), tested against :func:`plurality`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Vote:
    """One tag's vote.  ``value`` is ``None`` when no neighbour has the tag (then all else is 0)."""

    value: Any | None
    share: float  # votes / cast, 0..1
    votes: float  # (weighted) votes for ``value``
    cast: float  # (weighted) votes cast, by the ``n_with_tag`` neighbours having the tag
    n_with_tag: int  # neighbours that have the tag
    similarity: float  # summed similarity of the neighbours voting for ``value``

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _weights(sims: Sequence[float], voters: Sequence[bool], weighted: bool) -> list[float]:
    if not weighted:
        return [1.0] * len(sims)
    w = [max(float(s), 0.0) for s in sims]
    if sum(wi for wi, v in zip(w, voters) if v) <= 0.0:
        return [1.0] * len(sims)  # every voter is dissimilar: fall back to counting
    return w


def plurality(labels: Sequence[Hashable | None], sims: Sequence[float], weighted: bool = False) -> Vote:
    """The plurality vote of ``labels`` (``None`` = no vote), neighbour ``i`` having similarity ``sims[i]``.

    The straightforward reference: a dict of running totals in neighbour order.
    """
    if len(labels) != len(sims):
        raise ValueError(f"{len(labels)} labels but {len(sims)} similarities")
    voters = [lab is not None for lab in labels]
    w = _weights(sims, voters, weighted)
    totals: dict[Hashable, list[float]] = {}
    for lab, wi, s in zip(labels, w, sims):
        if lab is None:
            continue
        t = totals.setdefault(lab, [0.0, 0.0])
        t[0] += wi
        t[1] += float(s)
    if not totals:
        return Vote(None, 0.0, 0.0, 0.0, 0, 0.0)
    value, (votes, sim) = min(totals.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    cast = 0.0
    for wi, v in zip(w, voters):  # summed in neighbour order, as vote_classes does
        cast += wi if v else 0.0
    return Vote(value, votes / cast if cast > 0 else 0.0, votes, cast, sum(voters), sim)


def vote_tags(
    exifs: Sequence[Mapping[str, str]], sims: Sequence[float], tags: Sequence[str], weighted: bool = False
) -> dict[str, Vote]:
    """Per tag, the plurality of the neighbours' raw values (``exifs[i]`` is neighbour ``i``'s EXIF)."""
    out = {}
    for tag in tags:
        labels = [None if (v := e.get(tag)) is None else str(v).strip() for e in exifs]
        out[tag] = plurality(labels, sims, weighted)
    return out


def vote_classes(
    classes: np.ndarray, sims: np.ndarray, n_classes: int, weighted: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`plurality` over queries.

    Args:
        classes: ``int [Q, k]`` class id of each neighbour's value, ``-1`` for no vote (tag
            absent, rare value, or a missing neighbour).
        sims: ``float [Q, k]`` similarities of the neighbours.
        n_classes: ``C``; ids are in ``0..C-1``.
        weighted: similarity-weighted votes (see the module docstring).
    Returns:
        ``(pred int64 [Q], share float64 [Q])``: the winning class (``-1`` when nobody voted)
        and its vote share in 0..1 (0 when nobody voted).
    """
    classes = np.asarray(classes, dtype=np.int64)
    sims = np.asarray(sims, dtype=np.float64)
    if classes.shape != sims.shape or classes.ndim != 2:
        raise ValueError(f"classes {classes.shape} and sims {sims.shape} must be the same [Q, k]")
    if classes.size and classes.max(initial=-1) >= n_classes:
        raise ValueError(f"class id {classes.max()} >= n_classes {n_classes}")
    if n_classes <= 0:
        return np.full(len(classes), -1, dtype=np.int64), np.zeros(len(classes))
    valid = classes >= 0
    w = np.where(valid, np.maximum(sims, 0.0) if weighted else 1.0, 0.0)
    if weighted:
        dead = (w.sum(1) <= 0.0) & valid.any(1)
        w[dead] = valid[dead].astype(np.float64)  # the same fall-back as plurality
    q = np.broadcast_to(np.arange(len(classes))[:, None], classes.shape)
    votes = np.zeros((len(classes), n_classes))
    simsum = np.zeros((len(classes), n_classes))
    # add.at accumulates in row-major (neighbour) order: the same float sums as plurality's loop.
    np.add.at(votes, (q[valid], classes[valid]), w[valid])
    np.add.at(simsum, (q[valid], classes[valid]), sims[valid])
    cast = np.zeros(len(classes))
    for j in range(classes.shape[1]):
        cast += w[:, j]
    cand = votes == votes.max(1, initial=0.0)[:, None]
    tied = np.where(cand, simsum, -np.inf)
    cand &= tied == tied.max(1, initial=-np.inf)[:, None]
    pred = cand.argmax(1).astype(np.int64)  # first True: the smallest class id among the ties
    nobody = ~valid.any(1)
    pred[nobody] = -1
    share = np.where(nobody, 0.0, votes[np.arange(len(classes)), np.maximum(pred, 0)] / np.where(cast > 0, cast, 1.0))
    return pred, share
