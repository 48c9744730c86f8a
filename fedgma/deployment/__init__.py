"""What the container image runs: the hardened SuperLink (``fedgma superlink``), the compose
file's one-shot services (``fedgma compose register|run``), and the process and Flower CLI
drivers they, the research tools and the tests build on. Needs the ``deploy`` extra.

Imports the app (``fedgma.app``) and the library, never ``fedgma.lab``; not part of the Flower
app bundle (``fab-include``).
"""
