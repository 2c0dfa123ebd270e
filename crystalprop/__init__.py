"""crystalprop: crystal property prediction with pretrained Matformer models on MindSpore."""

from __future__ import annotations

import os

from crystalprop.utils.lazy import lazy_attributes

__version__ = "0.1.0"

if os.name != "posix":  # training relies on POSIX process groups and signals (setsid, SIGHUP, SIGTERM)
    raise ImportError("crystalprop runs on Linux and macOS (POSIX systems) only; on Windows, use WSL "
                      "(Windows Subsystem for Linux)")

__all__ = ["__version__", "evaluate", "predict", "train"]


_HOMES = {"predict": "prediction.predictor", "train": "training.jobs", "evaluate": "evaluation.evaluate:evaluate_model"}
"""Where each public function lives: loaded on first use (keeps ``import crystalprop`` light), the
function itself, so that ``help()`` and IDEs see its parameters."""

__getattr__ = lazy_attributes("crystalprop", _HOMES)


def __dir__() -> list[str]:
    """The public functions and the module's own dunders, not the names its code imports."""
    return sorted({name for name in globals() if name.startswith("__")} | set(__all__))
