"""Research tools: experiment grids, reports, verdicts, the colour probe, the toy figure,
benchmarks and the demo (``fedgma grid|report|probe|toy|bench|demo``). Needs the ``lab`` extra.

Builds on :mod:`fedgma.deployment` (processes, Flower CLI, the app folder); not part of the Flower
app bundle (``fab-include``); nothing below it imports it.
"""
