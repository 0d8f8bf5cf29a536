"""The cost model: XGBoost regression from candidate features to log kernel time.

Trained on the candidates measured so far (invalid ones excluded) and on what the same device
logged for other workloads on the same target (:func:`log_history`: the features describe the
workload too, so a run on a new shape starts informed), it ranks the unmeasured ones; the
search measures the predicted-fastest next. Predicting log time makes the model care
about ratios (a 2x error at 20 us weighs like one at 2 ms). :func:`rank_correlation` (Spearman)
between predictions and measurements on candidates the model did not train on is how the
tuning report judges it.
"""
from __future__ import annotations

import math

import numpy as np

import schedules
from schedules import contract

from ..spec import MPGemmSpec
from .space import Candidate, features


class CostModel:
    """XGBoost over candidate features; ``predict`` returns estimated log(us).

    Example:
        >>> m = CostModel()
        >>> m.fit([[0.0], [1.0], [2.0], [3.0]], [10.0, 20.0, 40.0, 80.0])
        >>> bool(m.predict([[0.0]])[0] < m.predict([[3.0]])[0])
        True
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._booster = None

    @property
    def trained(self) -> bool:
        return self._booster is not None

    def fit(self, X, us) -> None:
        """Fit on feature rows ``X`` and measured times ``us`` (microseconds)."""
        import xgboost as xgb
        X = np.asarray(X, np.float32)
        y = np.log(np.asarray(us, np.float64))
        params = {"max_depth": 4, "eta": 0.3, "min_child_weight": 1, "subsample": 1.0,
                  "objective": "reg:squarederror", "seed": self.seed, "nthread": 1, "verbosity": 0}
        self._booster = xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=60)

    def predict(self, X) -> np.ndarray:
        """Predicted log(us) per row (0 for every row before training)."""
        X = np.asarray(X, np.float32)
        if self._booster is None:
            return np.zeros(len(X))
        import xgboost as xgb
        return self._booster.predict(xgb.DMatrix(X))


def log_history(records, workload: dict, target: dict, device: str, schedule_names: list,
                knob_names: list) -> tuple:
    """``(X, us)``: features and times of the valid search measurements that ``device`` logged
    on ``target`` for workloads other than ``workload``, in the candidates of ``schedule_names``
    with knobs among ``knob_names`` (the space being tuned; a record of another schedule or of
    knobs since renamed says nothing about it). Defaults (``knobs = {}``) are left out as in the
    search: their knobs are the schedule's, not the record's. A record that predates a knob is
    featurized with the value its kernel had (:func:`schedules.contract.recorded_knobs`), as
    the same kernel is in the space.

    Example:
        >>> import lutc
        >>> rec = {"workload": lutc.MPGemmSpec(1, 64, 256).key(), "target": {"kind": "llvm"},
        ...        "device": "cpu", "schedule": "x86", "knobs": {"unroll": 2}, "us": 5.0, "error": None}
        >>> X, us = log_history([rec], lutc.MPGemmSpec(1, 128, 256).key(), {"kind": "llvm"}, "cpu",
        ...                     ["x86"], ["unroll"])
        >>> len(X), us
        (1, [5.0])
    """
    X, us = [], []
    for r in records:
        knobs = r.get("knobs") or {}
        if (r.get("target") != target or r.get("device") != device or r.get("error") or not knobs
                or r.get("workload") == workload or r.get("schedule") not in schedule_names
                or not set(knobs) <= set(knob_names)):
            continue
        t = r.get("us")
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            continue
        try:
            spec = MPGemmSpec(**r["workload"])
        except (TypeError, ValueError):      # a workload of another lutc version
            continue
        module = schedules.named(r["schedule"])
        if module is None:                   # a schedule lutc no longer has
            continue
        knobs = contract.recorded_knobs(module, knobs)
        X.append(features(spec, Candidate(r["schedule"], tuple(sorted(knobs.items()))), schedule_names, knob_names))
        us.append(float(t))
    return X, us


def rank_correlation(a, b) -> float:
    """Spearman's rank correlation of two sequences (NaN if fewer than 3 or constant)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    for value in np.unique(v):
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks
