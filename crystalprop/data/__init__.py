"""Labelled data sets: reading the user's layouts and splits, and building their graphs once (cached).

Used alike by training and by evaluation. This module itself imports nothing heavy.
"""

VAL_FRACTION = 0.1
"""Share of the structures held out for validation when the data has no split of its own."""
TEST_FRACTION = 0.0
"""Share held out for testing when the data has no split of its own."""
LIMIT_VAL_DIVISOR = 8
"""``--limit N`` trains on the first N training structures and validates on the first N / 8 validation ones."""


def limited_val(limit: int) -> int:
    """How many validation structures a run of ``--limit limit`` keeps (at most; fewer where the split has fewer)."""
    return max(limit // LIMIT_VAL_DIVISOR, 1)


def check_fold(fold: tuple[int, int]) -> None:
    """Refuse a fold that does not exist: K >= 2 folds, numbered 1 to K."""
    i, k = fold
    if k < 2 or not 1 <= i <= k:
        raise ValueError(f"fold {i}/{k}: cross-validation needs at least 2 folds, numbered 1 to {max(k, 2)}")
