"""How good a model is, and how sure: error and uncertainty metrics (``metrics``, used by training too),
``crystalprop.evaluate`` and its plots (``evaluate``), joining members into an ensemble and calibrating its
σ on the validation split (``joining``)."""
