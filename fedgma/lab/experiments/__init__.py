"""Experiment grids, their reports and the toy figure (issue 3)."""
