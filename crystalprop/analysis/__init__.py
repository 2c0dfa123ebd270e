"""Analysis of a structure beyond reading it: does it lie inside the models' domain?"""
