"""The Flower app: ServerApp, ClientApp, their run settings and the colored-MNIST task.

Uses the library (``fedgma.strategy``, ``fedgma.loop``); never imports ``fedgma.lab``.
"""
