"""crystalprop: crystal property prediction with pretrained Matformer models on MindSpore."""

from __future__ import annotations

import os

__version__ = "0.1.0"

if os.name != "posix":  # training relies on POSIX process groups and signals (setsid, SIGHUP, SIGTERM)
    raise ImportError("crystalprop runs on Linux and macOS (POSIX systems) only; on Windows, use WSL "
                      "(Windows Subsystem for Linux)")

__all__ = ["__version__", "predict"]


def predict(*args, **kwargs):
    """Predict properties of structures or files; see :func:`crystalprop.predictor.predict`."""
    from crystalprop.predictor import predict as _predict  # lazy: keeps `import crystalprop` fast

    return _predict(*args, **kwargs)
