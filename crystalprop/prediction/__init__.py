"""``crystalprop.predict``: reader processes that survive a dying worker (``workers``), models that share
networks (``predictor``), result files written as they come (``output``), what ``inspect`` shows
(``inspection``)."""
