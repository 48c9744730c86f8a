"""The report's figures (matplotlib): accuracy per round on each setting's primary test set
(:data:`~.grids.PRIMARY_TEST_SET`), and the ablations."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .grids import (
    ABLATION_SETTING,
    ABLATION_WS,
    BASELINE,
    NO_MASK_CONTROLS,
    PRIMARY_TEST_SET,
    SETTING_TITLES,
    SETTINGS,
)
from .runs import LAST_ROUNDS, Run, select, tau_runs


def _colours(labels: Sequence[str]) -> dict[str, str]:
    """One colour per arm in every panel: FedAvg black, the others matplotlib's cycle in ``labels``' order."""
    others = [label for label in labels if label != BASELINE]
    return {BASELINE: "black", **{label: f"C{i % 10}" for i, label in enumerate(others)}}


def _plot_curves(ax: Any, runs: list[Run], labels: Sequence[str], setting: str, study: str) -> None:
    test = PRIMARY_TEST_SET[setting]
    column = f"{test}-accuracy"
    colours = _colours(labels)
    for label in labels:
        chosen = [r for r in select(runs, setting, label, study)
                  if all(row.get(column) is not None for row in r.rounds)]
        if not chosen:
            continue
        length = min(len(r.rounds) for r in chosen)
        rounds = [r["round"] for r in chosen[0].rounds[:length]]
        curves = [[row[column] * 100 for row in r.rounds[:length]] for r in chosen]
        mean = [statistics.fmean(col) for col in zip(*curves, strict=False)]
        low = [min(col) for col in zip(*curves, strict=False)]
        high = [max(col) for col in zip(*curves, strict=False)]
        style: dict[str, Any] = {"color": colours[label], "linewidth": 2 if label == BASELINE else 1.3}
        if label in NO_MASK_CONTROLS.values() and label != BASELINE:
            style["linestyle"] = "--"
        (line,) = ax.plot(rounds, mean, label=f"{label} (n={len(chosen)})", **style)
        ax.fill_between(rounds, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_title(SETTING_TITLES[setting])
    ax.set_xlabel("round")
    ax.set_ylabel(f"{test if test == 'plain' else test.upper()} accuracy (%)")
    ax.grid(alpha=0.3)


def plot_settings(runs: list[Run], labels: Sequence[str], path: Path, title: str, study: str = "main",
                  settings: tuple[str, ...] = tuple(SETTINGS)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(settings) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(12, 4.25 * rows + 0.5), squeeze=False)
    for ax, setting in zip(axes.flat, settings, strict=False):
        _plot_curves(ax, runs, labels, setting, study)
    # Every arm drawn in any panel, once (panels may lack arms; each arm has one colour throughout).
    legend: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name.rsplit(" (n=", 1)[0], handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=(len(labels) + 1) // 2, fontsize=8.5)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1 / rows, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ablations(runs: list[Run], default_tau: float, path: Path, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_tau: dict[float, list[Run]] = defaultdict(list)
    for run in tau_runs(runs):
        by_tau[run.tau if run.tau is not None else default_tau].append(run)
    taus = sorted(by_tau)
    for metric, name in (("primary", f"OOD accuracy, last {LAST_ROUNDS} rounds"), ("final", "final OOD accuracy")):
        values = {t: [100 * float(getattr(r, metric)("ood")) for r in by_tau[t]] for t in taus}
        means = [statistics.fmean(values[t]) for t in taus]
        errs = [statistics.stdev(values[t]) if len(values[t]) > 1 else 0 for t in taus]
        left.errorbar(taus, means, yerr=errs, marker="o", capsize=3, label=name)
    baseline = select(runs, ABLATION_SETTING, BASELINE)
    if baseline:
        left.axhline(100 * statistics.fmean(float(r.primary("ood") or 0.0) for r in baseline), color="black",
                     linestyle="--", label=f"FedAvg OOD accuracy, last {LAST_ROUNDS} rounds")
    left.set_xlabel("tau (FedGMA ws, eta_s = 1)")
    left.set_ylabel("OOD accuracy (%)")
    left.set_title("agreement threshold tau")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    epochs = sorted({r.local_epochs for r in runs if "epochs" in r.studies})
    for label in (BASELINE, ABLATION_WS):
        groups = [select(runs, ABLATION_SETTING, label, study="epochs", local_epochs=e) for e in epochs]
        points = [(e, g) for e, g in zip(epochs, groups, strict=False) if g]
        epoch_values = [[100 * float(r.primary("ood") or 0.0) for r in g] for _, g in points]
        right.errorbar([e for e, _ in points], [statistics.fmean(v) for v in epoch_values],
                       yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in epoch_values], marker="o", capsize=3,
                       label=f"{label}: OOD accuracy, last {LAST_ROUNDS} rounds")
    right.set_xlabel("local epochs E")
    right.set_ylabel("OOD accuracy (%)")
    right.set_title("local epochs")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(f"Ablations on binary non-IID colored {dataset}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
