"""Regression metrics reported by training and ``crystalprop evaluate``."""

from __future__ import annotations

import numpy as np


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R², max absolute error and count."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    err = y_pred - y_true
    if err.size == 0:
        return {"n": 0, "mae": float("nan"), "rmse": float("nan"), "r2": float("nan"), "max_error": float("nan")}
    variance = np.sum((y_true - y_true.mean()) ** 2)
    return {
        "n": int(err.size),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r2": float(1.0 - np.sum(err**2) / variance) if variance > 0 else float("nan"),
        "max_error": float(np.max(np.abs(err))),
    }


def uncertainty_metrics(y_true: np.ndarray, y_pred: np.ndarray, std: np.ndarray,
                        interval95: float | None = None) -> dict[str, float]:
    """How well σ tells the size of the error: Spearman(σ, |error|), the fraction of errors
    within σ and 2σ (68 % and 95 % for well-calibrated Gaussian errors), and the mean σ; with the
    model's ``interval95`` (the multiple of σ meant to cover 95 %), the fraction within it."""
    from scipy.stats import spearmanr  # noqa: PLC0415  (scipy comes with pymatgen)

    err = np.abs(np.asarray(y_pred, np.float64) - np.asarray(y_true, np.float64))
    std = np.asarray(std, np.float64)
    ranked = err.size > 1 and np.ptp(std) > 0 and np.ptp(err) > 0  # a constant has no rank (scipy would warn)
    return {
        "sigma_spearman": float(spearmanr(std, err).statistic) if ranked else float("nan"),
        "within_1sigma": float(np.mean(err <= std)),
        "within_2sigma": float(np.mean(err <= 2 * std)),
        "mean_sigma": float(np.mean(std)),
        **({"within_interval95": float(np.mean(err <= interval95 * std))} if interval95 else {}),
    }


def coverage_curve(y_true: np.ndarray, y_pred: np.ndarray, std: np.ndarray,
                   levels: int = 19) -> tuple[np.ndarray, np.ndarray]:
    """(expected, observed) coverage of the central Gaussian intervals ± z·σ at 5 %, 10 %, ..., 95 %."""
    from scipy.stats import norm  # noqa: PLC0415

    expected = np.linspace(0.05, 0.95, levels)
    z = norm.ppf(0.5 + expected / 2)
    err = np.abs(np.asarray(y_pred, np.float64) - np.asarray(y_true, np.float64))
    observed = np.array([np.mean(err <= zi * np.asarray(std)) for zi in z])
    return expected, observed
