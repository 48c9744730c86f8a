"""Host-side tooling: process launcher, demo, experiment grids, reports, benchmarks, the
compose control service and the ``fedgma`` command. Needs the ``lab`` extra.

Not part of the Flower app bundle (``fab-include``); the app never imports it.
"""
