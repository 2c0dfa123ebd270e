"""Labelled data sets: reading the user's layouts and splits, and building their graphs once (cached).

Used alike by training and by evaluation. This module itself imports nothing heavy.
"""

VAL_FRACTION = 0.1
"""Share of the structures held out for validation when the data has no split of its own."""
TEST_FRACTION = 0.0
"""Share held out for testing when the data has no split of its own."""
