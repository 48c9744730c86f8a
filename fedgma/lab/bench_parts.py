"""The benchmark's parts by name (``fedgma bench --parts``), importable without the benchmark."""

BENCH_PARTS = ("aggregation", "memory", "payload", "rounds", "scale", "imports", "deployment", "fleet", "jobs")
QUICK_PARTS = ("aggregation", "memory", "payload", "imports")
README_BLOCKS = ("imports", "deployment", "jobs")  # also shown in the README, where it has their markers
