"""The Matformer network (in MindSpore, and a numpy inference engine) and its checkpoint format."""

SIGMA_CHOICES = ("spread", "latent")
"""Where an ensemble's σ comes from: the members' spread, or the latent distance (:mod:`.latent_sigma`).
Here, not in those modules, so that the command line reads it without importing numpy."""

ENGINES = ("auto", "numpy", "mindspore")
"""Inference engines (:func:`crystalprop.predictor.choose_engine`), here for the command line too."""
