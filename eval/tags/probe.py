"""Linear probe: logistic regression on frozen image embeddings, one classifier per tag.

Features are standardised (``StandardScaler`` fitted on the train rows) and fed to scikit-learn's
``LogisticRegression`` (lbfgs, multinomial for more than two classes, L2 penalty).  The inverse
regularisation ``C`` is fixed (1.0 by default) or, with ``c=None``, chosen from
:data:`C_GRID` by stratified k-fold accuracy on the train rows (k = min(3, smallest class
size); with a class of one image there is nothing to cross-validate and 1.0 is used).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
MAX_ITER = 2000
SMALL = 10_000_000


def _pipeline(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed))


def choose_c(x: np.ndarray, y: np.ndarray, grid: Sequence[float] = C_GRID, seed: int = 0) -> float:
    """The ``C`` of ``grid`` with the best mean stratified k-fold accuracy (ties: the smaller C)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = min(3, int(np.bincount(y).min(initial=0) if len(y) else 0))
    if folds < 2:
        return 1.0
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = [cross_val_score(_pipeline(c, seed), x, y, cv=cv).mean() for c in grid]
    return float(grid[int(np.argmax(scores))])


def probe_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, c: float | None = 1.0, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Fit on ``x_train`` ``float [N, D]`` / ``y_train`` ``int [N]`` (class ids >= 0, at least two
    distinct), predict ``x_test`` ``float [M, D]`` -> (``int64 [M]`` class ids, the ``C`` used)."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    y_train = np.asarray(y_train, dtype=np.int64)
    if len(np.unique(y_train)) < 2:
        raise ValueError("a linear probe needs train rows of at least two classes")
    _, y_dense = np.unique(y_train, return_inverse=True)  # sklearn wants the labels it saw
    with warnings.catch_warnings(), threadpool_limits(1 if x_train.size < SMALL else None):
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached: still a usable fit
        chosen = choose_c(x_train, y_dense, seed=seed) if c is None else float(c)
        clf = _pipeline(chosen, seed).fit(x_train, y_train)
        pred = clf.predict(x_test) if len(x_test) else np.zeros(0, np.int64)
    return np.asarray(pred, dtype=np.int64), chosen
