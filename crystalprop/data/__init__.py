"""Labelled data sets: reading the user's layouts and splits, and building their graphs once (cached).

Used alike by training and by evaluation.
"""
