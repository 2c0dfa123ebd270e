"""crystalprop: crystal property prediction with pretrained Matformer models on MindSpore."""

from __future__ import annotations

import os

__version__ = "0.1.0"

if os.name != "posix":  # training relies on POSIX process groups and signals (setsid, SIGHUP, SIGTERM)
    raise ImportError("crystalprop runs on Linux and macOS (POSIX systems) only; on Windows, use WSL "
                      "(Windows Subsystem for Linux)")

__all__ = ["__version__", "evaluate", "predict", "train"]


def predict(*args, **kwargs):
    """Predict properties of structures or files; see :func:`crystalprop.predictor.predict`."""
    from crystalprop.predictor import predict as _predict  # lazy: keeps `import crystalprop` fast

    return _predict(*args, **kwargs)


def train(*args, **kwargs):
    """Train a model on a labelled data set; see :func:`crystalprop.training.jobs.train`."""
    from crystalprop.training.jobs import train as _train  # lazy, as predict

    return _train(*args, **kwargs)


def evaluate(*args, **kwargs):
    """Measure a model on a labelled data set; see :func:`crystalprop.evaluation.evaluate_model`."""
    from crystalprop.evaluation import evaluate_model  # lazy, as predict

    return evaluate_model(*args, **kwargs)
