"""The Matformer network (in MindSpore, and a numpy inference engine), its checkpoint format, and the
shipped models with how their names resolve (``registry``)."""

SIGMA_CHOICES = ("spread", "latent", "latent+spread")
"""Where an ensemble's σ comes from: the members' spread, the latent distance (:mod:`.latent_sigma`), or both
(:func:`.ensemble.ensemble_output`).
Here, not in those modules, so that the command line reads it without importing numpy."""


def check_sigma_choice(sigma: str) -> str:
    """``sigma`` if it is one of :data:`SIGMA_CHOICES`; ValueError naming the choices otherwise."""
    if sigma not in SIGMA_CHOICES:
        raise ValueError(f"sigma must be one of {', '.join(SIGMA_CHOICES)}, not {sigma!r}")
    return sigma

ENGINES = ("auto", "numpy", "mindspore")
"""Inference engines (:func:`crystalprop.prediction.predictor.choose_engine`), here for the command line too."""
