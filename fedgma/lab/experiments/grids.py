"""Named experiment grids: the paper's Figure 2 settings, the baselines and the ablations.

A grid is a list of :class:`RunSpec`, each one ``flwr run`` of this app with
its own run settings. Run names are derived from the settings that differ,
so a run shared by two studies (e.g. ``tau = 0.8`` in the tau ablation and
the main comparison) is one run, run once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# The paper's four settings (the full grid).
SETTINGS: dict[str, dict[str, object]] = {
    "binary-iid": {"task": "binary", "partitioning": "iid"},
    "binary-non-iid": {"task": "binary", "partitioning": "non-iid"},
    "ten-class-iid": {"task": "ten-class", "partitioning": "iid"},
    "ten-class-non-iid": {"task": "ten-class", "partitioning": "non-iid"},
}

# The cases the AND-mask was designed for (the "when" grid), binary task, IID labels so that
# the shortcut's relation to the label is the only thing that differs between clients:
# how the shortcut relates to the label across clients (fedgma.app.task.colored) ...
RELATIONS: dict[str, dict[str, object]] = {
    "opposite": {"shortcut": "color", "shortcut-reversed-share": 0.5},  # half the clients each way
    "majority": {"shortcut": "color", "shortcut-reversed-share": 0.3},  # 70 % one way, 30 % the other
    "private": {"shortcut": "marker", "shortcut-reversed-share": 0.5},  # a marker of each client's own
    "same": {"shortcut": "color", "shortcut-reversed-share": 0.0},  # the contrast: every client alike
}
# ... and who takes part in a round: every client, or 10 of 50 (the paper's regime).
PARTICIPATION: dict[str, dict[str, object]] = {
    "partial": {"clients": 50, "train-images": 25000, "fraction-train": 0.2, "min-nodes": 10},
    "full": {"clients": 10, "train-images": 5000, "fraction-train": 1.0, "min-nodes": 10},
}
WHEN_SETTINGS: dict[str, dict[str, object]] = {
    f"{relation}-{participation}": {
        "task": "binary", "partitioning": "iid", **shortcut, **sampling,
        # The server's marker test sets carry the markers of this federation's clients.
        **({"marker-clients": sampling["clients"]} if shortcut["shortcut"] == "marker" else {}),
    }
    for participation, sampling in PARTICIPATION.items() for relation, shortcut in RELATIONS.items()
}
# 10-class with colour-class correlation below 1: shape is needed to fit the training data.
CORRELATIONS = (0.8, 0.9)
WHEN_SETTINGS.update({
    f"ten-class-rho{rho:g}": {"task": "ten-class", "partitioning": "non-iid", "color-class-correlation": rho,
                              **PARTICIPATION["full"]}
    for rho in CORRELATIONS
})
ALL_SETTINGS: dict[str, dict[str, object]] = {**SETTINGS, **WHEN_SETTINGS}
_RELATION_TITLES = {"opposite": "opposite signs", "majority": "majority sign (70/30)",
                    "private": "private markers", "same": "same sign"}
SETTING_TITLES: dict[str, str] = {
    "binary-iid": "binary, IID",
    "binary-non-iid": "binary, non-IID",
    "ten-class-iid": "10-class, IID",
    "ten-class-non-iid": "10-class, non-IID",
    **{f"{relation}-{participation}": f"{title}, {participation} participation"
       for relation, title in _RELATION_TITLES.items() for participation in PARTICIPATION},
    **{f"ten-class-rho{rho:g}": f"10-class, colour-class correlation {rho:g}" for rho in CORRELATIONS},
}
# The OOD test set each setting's primary metric reads: the relation settings' shortcut is
# reversed for some clients, so only the set without any shortcut ("plain") is unseen by all.
PRIMARY_TEST_SET: dict[str, str] = {setting: "plain" if setting in WHEN_SETTINGS and
                                    not setting.startswith("ten-class") else "ood" for setting in ALL_SETTINGS}

# The grid's arms: label -> (short key used in run names, run settings). Each names a strategy of
# the app's registry (fedgma.app.strategies.STRATEGIES) with the settings that make the arm.
ARMS: dict[str, tuple[str, dict[str, object]]] = {
    "FedAvg": ("fedavg", {"strategy": "fedavg"}),
    "FedGMA ws, eta_s=0.01": ("ws-lr0.01", {"strategy": "fedgma", "variant": "ws", "tau": 0.8, "server-lr": 0.01}),
    "FedGMA ws, eta_s=0.1": ("ws-lr0.1", {"strategy": "fedgma", "variant": "ws", "tau": 0.8, "server-lr": 0.1}),
    "FedGMA ws, eta_s=1": ("ws-lr1", {"strategy": "fedgma", "variant": "ws", "tau": 0.8, "server-lr": 1.0}),
    "FedGMA gma, tau=0.4": ("gma", {"strategy": "fedgma", "variant": "gma", "tau": 0.4, "server-lr": 1.0}),
    "FedProx, mu=0.01": ("fedprox", {"strategy": "fedprox", "proximal-mu": 0.01}),
    "FedAdam": ("fedadam", {"strategy": "fedadam"}),
    "FedGMA gma + FedAdam": ("gma-adam", {"strategy": "fedgma-adam", "tau": 0.4}),
    # No-mask controls: FedGMA ws with the mask forced open (tau = 0 keeps every coordinate),
    # i.e. FedAvg whose server step is 1 + eta_s. The keys match the tau ablation's tau = 0 run.
    "FedAvg, server step 1.1 (no mask)": (
        "ws-lr0.1-tau0", {"strategy": "fedgma", "variant": "ws", "tau": 0.0, "server-lr": 0.1}),
    "FedAvg, server step 2 (no mask)": (
        "ws-lr1-tau0", {"strategy": "fedgma", "variant": "ws", "tau": 0.0, "server-lr": 1.0}),
    # Selectivity controls: the same kept count per array at random places (seeded by the run's
    # seed), and gma with a uniform server step equal to the round's mean mask.
    "FedGMA ws, eta_s=0.1, random mask": ("ws-lr0.1-random", {"strategy": "fedgma", "variant": "ws", "tau": 0.8,
                                                             "server-lr": 0.1, "mask-control": "random"}),
    "FedGMA ws, eta_s=1, random mask": ("ws-lr1-random", {"strategy": "fedgma", "variant": "ws", "tau": 0.8,
                                                         "server-lr": 1.0, "mask-control": "random"}),
    "FedGMA gma, tau=0.4, random mask": ("gma-random", {"strategy": "fedgma", "variant": "gma", "tau": 0.4,
                                                       "server-lr": 1.0, "mask-control": "random"}),
    "FedGMA gma, tau=0.4, uniform step": ("gma-uniform", {"strategy": "fedgma", "variant": "gma", "tau": 0.4,
                                                         "server-lr": 1.0, "mask-control": "uniform"}),
}
BASELINE = "FedAvg"
# Each FedGMA run's no-mask control: the same server update with every coordinate kept.
# gma's soft mask only shrinks FedAvg's step (m <= 1, eta_s = 1), so its control is FedAvg.
NO_MASK_CONTROLS: dict[str, str] = {
    "FedGMA ws, eta_s=0.1": "FedAvg, server step 1.1 (no mask)",
    "FedGMA ws, eta_s=1": "FedAvg, server step 2 (no mask)",
    "FedGMA gma, tau=0.4": BASELINE,
}
# Each FedGMA run's selectivity controls: its mask's kept count at random places; for gma also a
# uniform step equal to its mean mask.
RANDOM_CONTROLS: dict[str, str] = {
    "FedGMA ws, eta_s=0.1": "FedGMA ws, eta_s=0.1, random mask",
    "FedGMA ws, eta_s=1": "FedGMA ws, eta_s=1, random mask",
    "FedGMA gma, tau=0.4": "FedGMA gma, tau=0.4, random mask",
}
STEP_CONTROLS: dict[str, str] = {"FedGMA gma, tau=0.4": "FedGMA gma, tau=0.4, uniform step"}
# The main comparison of the full grid: every strategy but the eta_s = 0.1 control, which only
# the client-step study runs (the 0.01 grid's compute went to the eta_s = 1 control everywhere).
MAIN_LABELS: tuple[str, ...] = ("FedAvg", "FedGMA ws, eta_s=0.01", "FedGMA ws, eta_s=0.1", "FedGMA ws, eta_s=1",
                                 "FedGMA gma, tau=0.4", "FedProx, mu=0.01", "FedAdam", "FedGMA gma + FedAdam",
                                 "FedAvg, server step 2 (no mask)")
# The paper's client step (SGD 0.001) on the binary settings: FedAvg, ws, its controls, gma.
PAPER_CLIENT_LR = 0.001
PAPER_STEP_SETTINGS = ("binary-iid", "binary-non-iid")
PAPER_STEP_LABELS: tuple[str, ...] = (BASELINE, "FedGMA ws, eta_s=0.1", "FedGMA ws, eta_s=1",
                                      "FedAvg, server step 1.1 (no mask)", "FedAvg, server step 2 (no mask)",
                                      "FedGMA gma, tau=0.4")
ABLATION_SETTING = "binary-non-iid"
ABLATION_TAUS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
ABLATION_EPOCHS = (1, 3, 5)
ABLATION_WS = "FedGMA ws, eta_s=1"  # the paper's best server step on binary non-IID


@dataclass(frozen=True)
class Scale:
    """How big each run of a grid is."""

    clients: int
    train_images: int  # drawn from the base training set, split over the clients
    test_images: int  # of each central test set (ID and OOD)
    binary_rounds: int
    ten_class_rounds: int
    seeds: tuple[int, ...]
    local_epochs: int = 3
    # The paper's 0.001 only learned the colour shortcut at 500 images per client
    # (48 local steps per round): OOD accuracy 0.11 after 23 rounds; 0.01 gives
    # about the paper's step budget per round (its clients held ~10x more images).
    client_lr: float = 0.01
    batch_size: int = 32


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid.

    Attributes
    ----------
    name : str
        Unique within the grid; the run's directory and ``run-name``.
    setting : str
        Key of :data:`SETTINGS`.
    label : str
        Strategy label, a key of :data:`ARMS`.
    seed : int
    studies : tuple[str, ...]
        ``main``, ``tau``, ``epochs`` and/or ``client-step`` (the paper's client step).
    run_config : dict
        The run settings passed with ``--run-config`` (besides output paths).
    clients : int
        The simulated federation's size (``num-supernodes``).
    """

    name: str
    setting: str
    label: str
    seed: int
    studies: tuple[str, ...]
    run_config: dict[str, object] = field(hash=False)
    clients: int = 10

    @property
    def rounds(self) -> int:
        """Its ``num-server-rounds``."""
        value = self.run_config["num-server-rounds"]
        assert isinstance(value, int)
        return value


@dataclass(frozen=True)
class Grid:
    """A named list of runs and the scale they share."""

    name: str
    description: str
    scale: Scale
    runs: tuple[RunSpec, ...]
    cut: tuple[RunSpec, ...] = ()  # planned, left out to fit the grid's budget of machine time

    def uncut(self) -> Grid:
        """This grid with its cut runs back in, in their planned order."""
        return replace(self, runs=self.runs + self.cut, cut=())


def _run(scale: Scale, setting: str, label: str, seed: int, study: str, **extra: object) -> RunSpec:
    key, strategy = ARMS[label]
    settings = dict(ALL_SETTINGS[setting])
    clients = int(settings.pop("clients", scale.clients))  # type: ignore[call-overload]
    rounds = scale.ten_class_rounds if settings["task"] == "ten-class" else scale.binary_rounds
    run_config: dict[str, object] = {
        "min-nodes": scale.clients,
        "fraction-train": 1.0,
        "train-images": scale.train_images,
        **settings,
        **strategy,
        "num-server-rounds": rounds,
        "test-images": scale.test_images,
        "local-epochs": scale.local_epochs,
        "client-lr": scale.client_lr,
        "batch-size": scale.batch_size,
        "seed": seed,
        **extra,
    }
    if "tau" in extra:
        key += f"-tau{extra['tau']:g}"
    if "local-epochs" in extra:
        key += f"-e{run_config['local-epochs']}"
    if "client-lr" in extra:
        key += f"-c{run_config['client-lr']:g}"
    name = f"{setting}_{key}_seed{seed}"
    return RunSpec(name, setting, label, seed, (study,), run_config, clients)


def build_grid(name: str, scale: Scale, description: str, ablations: bool = True,
               settings: tuple[str, ...] = tuple(SETTINGS), labels: tuple[str, ...] = MAIN_LABELS,
               paper_step_labels: tuple[str, ...] = PAPER_STEP_LABELS) -> Grid:
    """All strategies x settings x seeds, the two ablations, then the binary settings at the
    paper's client step (deduplicated: a run shared by two studies is one run)."""
    runs: dict[str, RunSpec] = {}

    def add(spec: RunSpec) -> None:
        if spec.name in runs:
            old = runs[spec.name]
            runs[spec.name] = RunSpec(old.name, old.setting, old.label, old.seed,
                                      old.studies + spec.studies, old.run_config, old.clients)
        else:
            runs[spec.name] = spec

    # Seed-major order: an interrupted grid has every run of its first seeds.
    for seed in scale.seeds:
        for setting in settings:
            for label in labels:
                add(_run(scale, setting, label, seed, "main"))
        if ablations:
            for tau in ABLATION_TAUS:
                if tau == ARMS[ABLATION_WS][1]["tau"]:  # the main run, not a new one
                    add(_run(scale, ABLATION_SETTING, ABLATION_WS, seed, "tau"))
                else:
                    add(_run(scale, ABLATION_SETTING, ABLATION_WS, seed, "tau", tau=tau))
            for epochs in ABLATION_EPOCHS:
                for label in (BASELINE, ABLATION_WS):
                    if epochs == scale.local_epochs:
                        add(_run(scale, ABLATION_SETTING, label, seed, "epochs"))
                    else:
                        add(_run(scale, ABLATION_SETTING, label, seed, "epochs", **{"local-epochs": epochs}))
        for setting in (s for s in PAPER_STEP_SETTINGS if s in settings):
            for label in paper_step_labels:
                add(_run(scale, setting, label, seed, "client-step", **{"client-lr": PAPER_CLIENT_LR}))
    return Grid(name, description, scale, tuple(runs.values()))


# Sized for 2 CPU cores: 10 clients (all sampled, so tau = 0.8 means 9 of 10 agree),
# 500 training images each, 2,000-image test sets. See the README for the reasons.
FULL_SCALE = Scale(clients=10, train_images=5000, test_images=2000, binary_rounds=50,
                   ten_class_rounds=100, seeds=(0, 1, 2))
QUICK_SCALE = Scale(clients=10, train_images=2000, test_images=1000, binary_rounds=3,
                    ten_class_rounds=3, seeds=(0,))
SMOKE_SCALE = Scale(clients=2, train_images=400, test_images=200, binary_rounds=2,
                    ten_class_rounds=2, seeds=(0,))


# The "when" grid's arms: FedAvg, FedGMA (ws at two server steps, gma), the no-mask controls
# and the selectivity controls; the contrast settings (same sign, 10-class) run fewer.
WHEN_LABELS: tuple[str, ...] = (
    BASELINE, "FedGMA ws, eta_s=0.1", "FedGMA ws, eta_s=1", "FedGMA gma, tau=0.4",
    "FedAvg, server step 1.1 (no mask)", "FedAvg, server step 2 (no mask)",
    *RANDOM_CONTROLS.values(), *STEP_CONTROLS.values(),
)
# Cut to fit the grid's budget (about 15 hours here; see docs/experiments.md). Full participation
# leaves out ws eta_s=0.1 and its two controls: with partial participation (3-4 seeds in each of the
# three settings) it sat within 0.6 points of FedAvg, of its no-mask control and of its random mask
# (its extra step is a tenth of an 8-12 % mask), so its runs cannot tell one mask from another.
# Its seeds past the contrast's 3 run late, where the budget may end the grid.
FULL_PARTICIPATION_LABELS: tuple[str, ...] = tuple(
    label for label in WHEN_LABELS
    if label not in ("FedGMA ws, eta_s=0.1", NO_MASK_CONTROLS["FedGMA ws, eta_s=0.1"],
                     RANDOM_CONTROLS["FedGMA ws, eta_s=0.1"]))
# Of those, the arms that answer "FedGMA minus FedAvg, minus its no-mask control, minus its random
# mask" for ws eta_s=1 run first; gma and its two controls follow (with partial participation gma
# sat within 0.2 points of FedAvg in all three settings).
FULL_PARTICIPATION_FIRST: tuple[str, ...] = (
    BASELINE, "FedGMA ws, eta_s=1", NO_MASK_CONTROLS["FedGMA ws, eta_s=1"], RANDOM_CONTROLS["FedGMA ws, eta_s=1"])
# The same-sign contrast runs with partial participation only (binary non-IID, with its controls
# below, is the full-participation same-sign setting), without gma's random mask; 10-class without
# gma; both 3 seeds instead of 5.
CONTRAST_LABELS: tuple[str, ...] = (
    BASELINE, "FedGMA ws, eta_s=1", "FedAvg, server step 2 (no mask)", "FedGMA ws, eta_s=1, random mask",
    "FedGMA gma, tau=0.4", "FedGMA gma, tau=0.4, uniform step",
)
TEN_CLASS_LABELS: tuple[str, ...] = (BASELINE, "FedGMA ws, eta_s=1", "FedAvg, server step 2 (no mask)",
                                     "FedGMA ws, eta_s=1, random mask")
# Selectivity controls beside the full grid's binary non-IID runs (same sign, full participation,
# non-IID labels; "same-full" is the setting with IID labels): identical settings, so the full
# grid's FedAvg, ws, gma and control runs are their references (their folders may be copied in: a
# finished run is not run again).
FULL_GRID_CONTROLS: tuple[str, ...] = (BASELINE, "FedGMA ws, eta_s=1", "FedAvg, server step 2 (no mask)",
                                       "FedGMA gma, tau=0.4", "FedGMA ws, eta_s=1, random mask",
                                       "FedGMA gma, tau=0.4, random mask", "FedGMA gma, tau=0.4, uniform step")


def build_when_grid(name: str, scale: Scale, description: str, seeds: tuple[int, ...],
                    contrast_seeds: tuple[int, ...], budget_runs: int | None = None) -> Grid:
    """The cases the AND-mask was designed for, most informative first (an interrupted grid
    has those): the three relation settings with partial participation, then with full
    participation (``contrast_seeds``; ws eta_s=1 with its references first, then gma's), then
    the selectivity controls in the full grid's binary settings, then 10-class with colour-class
    correlation below 1, then full participation's other seeds, and last the same-sign contrast
    (partial), the first to be cut. Seed-major within each.
    ``budget_runs``: how many of these runs the budget allowed (the rest are ``cut``; None: all)."""
    runs: list[RunSpec] = []
    phases: list[tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]] = []
    partial, full = (tuple(f"{relation}-{participation}" for relation in ("opposite", "majority", "private"))
                     for participation in ("partial", "full"))
    phases.append((partial, WHEN_LABELS, seeds))
    phases.append((full, FULL_PARTICIPATION_FIRST, contrast_seeds))
    gma_arms = tuple(label for label in FULL_PARTICIPATION_LABELS if label not in FULL_PARTICIPATION_FIRST)
    phases.append((full, gma_arms, contrast_seeds))
    phases.append(((ABLATION_SETTING,), FULL_GRID_CONTROLS, contrast_seeds))
    phases.append((tuple(f"ten-class-rho{rho:g}" for rho in CORRELATIONS), TEN_CLASS_LABELS, contrast_seeds))
    # Last, where the budget may end the grid: full participation's other seeds, then the contrast
    # (with the mask doing nothing in all three designed-for settings, a same-sign setting where it
    # is expected to do nothing tells the least).
    phases.append((full, FULL_PARTICIPATION_LABELS, tuple(s for s in seeds if s not in contrast_seeds)))
    phases.append((("same-partial",), CONTRAST_LABELS, contrast_seeds))
    for settings, labels, phase_seeds in phases:
        for seed in phase_seeds:
            for setting in settings:
                runs += [_run(scale, setting, label, seed, "when") for label in labels]
    kept = runs if budget_runs is None else runs[:budget_runs]
    return Grid(name, description, scale, tuple(kept), tuple(runs[len(kept):]))


# The when grid's runs that its budget (about 15 hours of grid time on these machines) allowed:
# the first ones of its plan, which puts the most informative first (docs/experiments.md, "Order,
# seeds and budget", says what the end of the budget cut).
WHEN_BUDGET_RUNS: int | None = 189


def grid_by_name(name: str) -> Grid:
    """Return one of :data:`GRID_NAMES`."""
    if name == "full":
        return build_grid("full", FULL_SCALE, "the paper's four settings, 8 strategies and the no-mask "
                          "control, 3 seeds; the tau and local-epochs ablations on binary non-IID; the "
                          "binary settings at the paper's client step 0.001")
    if name == "quick":
        return build_grid("quick", QUICK_SCALE, "the full grid's runs with one seed, 3 rounds and "
                          "fewer images: exercises the same code in minutes")
    if name == "smoke":
        return build_grid("smoke", SMOKE_SCALE, "five runs of two rounds (the test suite's grid): FedAvg, "
                          "FedGMA ws and its no-mask control; FedAvg and FedGMA ws at the paper's client step",
                          ablations=False, settings=("binary-non-iid",),
                          labels=(BASELINE, ABLATION_WS, NO_MASK_CONTROLS[ABLATION_WS]),
                          paper_step_labels=(BASELINE, ABLATION_WS))
    if name == "when":
        return build_when_grid("when", FULL_SCALE, "when does the mask help: opposite, majority and private "
                               "shortcuts with partial and full participation (and the same-sign contrast), "
                               "random-mask and step-matched controls, 10-class with colour-class correlation "
                               "0.8 and 0.9", seeds=(0, 1, 2, 3, 4), contrast_seeds=(0, 1, 2),
                               budget_runs=WHEN_BUDGET_RUNS)
    raise KeyError(f"unknown grid {name!r}; choose one of {', '.join(GRID_NAMES)}")


# One line each for `fedgma grid --help` (the descriptions above say more).
GRID_SUMMARIES = {"full": "the paper's settings and ablations", "when": "when does the mask help",
                  "quick": "the full grid's runs in minutes", "smoke": "the tests' five short runs"}
GRID_NAMES = tuple(GRID_SUMMARIES)
