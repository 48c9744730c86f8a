"""``python -m fedgma``: the ``fedgma`` command (:mod:`fedgma.cli`), run from the code beside the
current directory (the container image's /app) rather than an installed copy."""

import sys

from fedgma.cli import main

sys.exit(main())
