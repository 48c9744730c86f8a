"""The "sewn optima" toy (FEDGMA.md; Figure 1 of the workshop paper), as a command.

Two clients over a 2-D parameter ``w`` in ``[-1, 1]^2``. Both share a broad,
shallow Gaussian well at ``S = (-0.5, 0.5)``; client A has a narrow, deeper
well at ``A = (0.5, -0.5)``, client B at ``B = (-0.5, -0.5)``. Their average
(what FedAvg minimises) is lowest at A and B; only S is a minimum of every
client, i.e. the one that generalises to a new client.

Each round both clients take ``E`` steps of gradient descent from the global
point; the server aggregates with FedAvg or with FedGMA's own
:class:`~fedgma.strategy.masking.MaskedAggregator` (the code the strategy
runs). The command draws the three loss surfaces with trajectories from a few
starting points and prints where each method ends from a 7 x 7 grid of starts.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Literal, cast

import numpy as np

from fedgma.strategy.masking import MaskedAggregator

SHARED = np.array([-0.5, 0.5])
CLIENT_MINIMA = (np.array([0.5, -0.5]), np.array([-0.5, -0.5]))
SHARED_DEPTH, SHARED_WIDTH = 1.0, 0.5
CLIENT_DEPTH, CLIENT_WIDTH = 2.5, 0.25
LOCAL_STEPS, LOCAL_LR, ROUNDS = 5, 0.01, 200
METHODS = {
    "FedAvg": None,
    "FedGMA ws (tau=0.8, eta_s=1)": ("ws", 0.8, 1.0),
    "FedGMA gma (tau=0.4)": ("gma", 0.4, 1.0),
}
TRAJECTORY_STARTS = ((0.9, 0.9), (-0.9, 0.9), (0.0, 0.0), (0.3, -0.9), (-0.9, -0.3), (0.9, -0.3))


def _well(w: np.ndarray, center: np.ndarray, depth: float, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Loss ``-depth * exp(-|w - c|^2 / (2 width^2))`` and its gradient; ``w`` has shape (..., 2)."""
    d = w - center
    e = np.exp(-(d**2).sum(-1) / (2 * width**2))
    return -depth * e, (depth * e / width**2)[..., None] * d


def client_loss(w: np.ndarray, client: int) -> tuple[np.ndarray, np.ndarray]:
    """Client ``client`` (0 = A, 1 = B): loss and gradient at ``w``."""
    l1, g1 = _well(w, SHARED, SHARED_DEPTH, SHARED_WIDTH)
    l2, g2 = _well(w, CLIENT_MINIMA[client], CLIENT_DEPTH, CLIENT_WIDTH)
    return l1 + l2, g1 + g2


def trajectory(start: tuple[float, float], method: tuple[str, float, float] | None) -> np.ndarray:
    """The global point after every round, starting at ``start``."""
    x = np.asarray(start, dtype=np.float64)
    path = [x]
    for _ in range(ROUNDS):
        replies = []
        for client in (0, 1):
            y = x.copy()
            for _ in range(LOCAL_STEPS):
                y = y - LOCAL_LR * client_loss(y, client)[1]
            replies.append(y)
        if method is None:
            x = (replies[0] + replies[1]) / 2
        else:
            variant, tau, server_lr = method
            aggregator = MaskedAggregator({"w": x}, variant=cast(Literal["ws", "gma"], variant), tau=tau,
                                          server_lr=server_lr)
            for y in replies:
                aggregator.add({"w": y}, 1.0)
            x = aggregator.result()[0]["w"]
        path.append(x)
    return np.array(path)


def nearest_minimum(x: np.ndarray, radius: float = 0.15) -> str:
    """``shared``, ``A``, ``B``, or ``none`` (stalled away from every minimum)."""
    for name, center in (("shared", SHARED), ("A", CLIENT_MINIMA[0]), ("B", CLIENT_MINIMA[1])):
        if np.linalg.norm(x - center) < radius:
            return name
    return "none"


def endpoint_counts(points: int = 7) -> dict[str, dict[str, int]]:
    """Where each method ends from a ``points x points`` grid of starts in [-0.9, 0.9]^2."""
    starts = list(itertools.product(np.linspace(-0.9, 0.9, points), repeat=2))
    counts = {}
    for label, method in METHODS.items():
        ends = [nearest_minimum(trajectory(s, method)[-1]) for s in starts]
        counts[label] = {name: ends.count(name) for name in ("shared", "A", "B", "none")}
    return counts


def draw(output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(-1, 1, 201)
    w = np.stack(np.meshgrid(grid, grid), axis=-1)
    surfaces = {"client A": client_loss(w, 0)[0], "client B": client_loss(w, 1)[0]}
    surfaces["average (what FedAvg minimises)"] = (surfaces["client A"] + surfaces["client B"]) / 2
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.4))
    styles = dict(zip(METHODS, ("-", "--", ":"), strict=False))
    colors = plt.cm.tab10(np.arange(len(TRAJECTORY_STARTS)))
    for ax, (title, z) in zip(axes, surfaces.items(), strict=False):
        contour = ax.contourf(grid, grid, z, levels=30, cmap="viridis")
        fig.colorbar(contour, ax=ax, shrink=0.85)
        ax.set_title(title)
        ax.set_xlabel("w1")
        ax.set_ylabel("w2")
        for name, point in (("S", SHARED), ("A", CLIENT_MINIMA[0]), ("B", CLIENT_MINIMA[1])):
            ax.annotate(name, point, color="white", fontsize=13, ha="center", va="center", weight="bold")
    average_ax = axes[2]
    for color, start in zip(colors, TRAJECTORY_STARTS, strict=False):
        for label, method in METHODS.items():
            path = trajectory(start, method)
            average_ax.plot(path[:, 0], path[:, 1], styles[label], color=color, linewidth=1.6)
            average_ax.plot(*path[-1], "o", color=color, markersize=4)
        average_ax.plot(*start, "s", color=color, markersize=5)
    for label in METHODS:
        average_ax.plot([], [], styles[label], color="white", label=label)
    average_ax.legend(loc="upper right", fontsize=7.5, facecolor="gray", labelcolor="white")
    fig.suptitle("Sewn optima: S is shared by both clients, A and B are client-specific "
                 f"({LOCAL_STEPS} local GD steps of {LOCAL_LR}, {ROUNDS} rounds; squares: starts, dots: ends)")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)


def main(output: Path) -> int:
    draw(output)
    print(f"toy figure: {output}")
    print("where each method ends from a 7 x 7 grid of starts in [-0.9, 0.9]^2 "
          "(within 0.15 of a minimum; none = stalled elsewhere):")
    print(f"{'method':<30} {'shared S':>8} {'A':>4} {'B':>4} {'none':>5}")
    for label, c in endpoint_counts().items():
        print(f"{label:<30} {c['shared']:>8} {c['A']:>4} {c['B']:>4} {c['none']:>5}")
    return 0
