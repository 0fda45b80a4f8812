"""Experiments: the in-process pipeline, grids, tables and the claim check."""
