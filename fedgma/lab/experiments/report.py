"""Tables and plots from a grid's ``results.csv`` (``fedgma report``).

Nothing here is typed by hand: every number comes from the CSV, every
hyperparameter from the grid's ``grid.json`` and the runs' ``config.json``.
Seeds are paired (same data split, colours and initial model per seed), so
the margin over FedAvg is the mean +- std of the per-seed differences.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ..markdown import replace_block
from .figures import plot_ablations, plot_settings
from .grids import (
    ABLATION_SETTING,
    ABLATION_WS,
    ALL_SETTINGS,
    ARMS,
    BASELINE,
    MAIN_LABELS,
    NO_MASK_CONTROLS,
    PAPER_CLIENT_LR,
    PAPER_STEP_LABELS,
    PAPER_STEP_SETTINGS,
    PRIMARY_TEST_SET,
    RANDOM_CONTROLS,
    SETTING_TITLES,
    SETTINGS,
    STEP_CONTROLS,
    WHEN_LABELS,
    WHEN_SETTINGS,
)
from .results import grid_run_folders, load_probes, percent
from .runs import LAST_ROUNDS, Run, load_runs, margin, mean_std, seed_values, select, tau_runs
from .verdicts import FLOOR_POINTS, HELPS, HURTS, Cell, at_floor, family_caption, judge, overall, paired

FIGURE2_LABELS = (BASELINE, "FedGMA ws, eta_s=0.01", "FedGMA ws, eta_s=0.1", "FedGMA ws, eta_s=1",
                  "FedGMA gma, tau=0.4", NO_MASK_CONTROLS["FedGMA ws, eta_s=1"])
STUDY_LABELS = {"main": MAIN_LABELS, "client-step": PAPER_STEP_LABELS}
STUDY_TITLES = {"main": "the grid's client step", "client-step": "the paper's client step"}
BASELINE_LABELS = (BASELINE, "FedGMA ws, eta_s=1", "FedProx, mu=0.01", "FedAdam", "FedGMA gma + FedAdam")
COLOUR_ONLY = 0.9  # share of probe images answered by colour above which a model "follows colour"
SWING_POINTS = 5.0  # a mean round-to-round change (points) over the last rounds that makes "final" a coin flip
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"  # the full grid's block (docs/experiments.md)
# The when grid's blocks: its tables (docs/experiments.md) and its summary (README.md).
WHEN_GRID = "when"
WHEN_BEGIN, WHEN_END = "<!-- when-results:begin -->", "<!-- when-results:end -->"
SUMMARY_BEGIN, SUMMARY_END = "<!-- when-summary:begin -->", "<!-- when-summary:end -->"
WHEN_COMMAND = "fedgma report results/when --readme README.md --readme docs/experiments.md --figures docs/figures"
# The when grid's settings in its order: the binary relations, the full grid's binary non-IID, 10-class.
WHEN_ORDER: tuple[str, ...] = (*(s for s in WHEN_SETTINGS if not s.startswith("ten-class")), ABLATION_SETTING,
                               *(s for s in WHEN_SETTINGS if s.startswith("ten-class")))
MASK_CHANNELS = ("mask-kept-red", "mask-kept-green", "mask-kept-blue")


def primary_of(setting: str) -> Callable[[Run], float | None]:
    """The primary metric of a setting's runs (mean of the last rounds on its primary test set)."""
    return lambda run: run.primary(PRIMARY_TEST_SET[setting])


def _test_title(test_set: str) -> str:
    return test_set if test_set == "plain" else test_set.upper()


def settings_table(runs: list[Run], setting: str, study: str = "main") -> list[str]:
    test = PRIMARY_TEST_SET[setting]
    name = _test_title(test)
    baseline = select(runs, setting, BASELINE, study)
    lines = [
        f"| strategy | seeds | {name} acc, last {LAST_ROUNDS} rounds | {name} acc at best-ID round | final {name} acc "
        f"| final ID acc | last-{LAST_ROUNDS} {name} vs FedAvg (pts) | s / round | best-ID round (per seed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in ARMS:
        chosen = select(runs, setting, label, study)
        if not chosen:
            continue
        lines.append(
            f"| {label} | {len(chosen)} | {mean_std([r.primary(test) for r in chosen])} "
            f"| {mean_std([r.peak(test) for r in chosen])} | {mean_std([r.final(test) for r in chosen])} "
            f"| {mean_std([r.final_id for r in chosen])} "
            f"| {'-' if label == BASELINE else margin(chosen, baseline, primary_of(setting))} "
            f"| {statistics.fmean(r.seconds_per_round for r in chosen):.2f} "
            f"| {', '.join(str(r.best_id_round) for r in chosen)} |"
        )
    return lines


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def learned_nothing(arm: list[Run], test_set: str) -> bool:
    """Whether an arm's mean primary value sits at chance or at its untrained model's accuracy."""
    value = _mean([r.primary(test_set) for r in arm])
    if value is None:
        return False
    return at_floor(value, 1.0 / arm[0].num_classes, _mean([r.untrained(test_set) for r in arm]))


def comparison(arm: list[Run], reference: list[Run], setting: str) -> Cell | None:
    """The paired comparison of two arms' primary metric, or None if they share no seed."""
    difference = paired(seed_values(arm, primary_of(setting)), seed_values(reference, primary_of(setting)))
    if difference is None:
        return None
    test = PRIMARY_TEST_SET[setting]
    return Cell(difference, not (learned_nothing(arm, test) and learned_nothing(reference, test)))


def _diff(arm: list[Run], reference: list[Run], metric: str, test_set: str) -> str:
    """The paired difference of ``metric`` (``peak`` or ``final``) on ``test_set``, formatted."""
    def value(run: Run) -> float | None:
        return cast(float | None, getattr(run, metric)(test_set))

    difference = paired(seed_values(arm, value), seed_values(reference, value))
    return "-" if difference is None else difference.format()


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def mask_comparisons(runs: list[Run], study: str) -> list[str]:
    """Per setting: each FedGMA run against FedAvg and against its no-mask control (paired
    per-seed differences of the primary metric, 95 % intervals, Holm over the table), then a
    one-line verdict on the mask from the comparisons with the controls."""
    rows: list[tuple[str, str, str, Cell, str, str, bool]] = []
    missing: list[str] = []
    for setting in SETTINGS:
        test = PRIMARY_TEST_SET[setting]
        for label in ARMS:
            chosen = select(runs, setting, label, study)
            if not label.startswith("FedGMA ") or "Adam" in label or not chosen:
                continue
            control = NO_MASK_CONTROLS.get(label)
            references = [BASELINE] + ([control] if control and control != BASELINE else [])
            for reference in references:
                against = select(runs, setting, reference, study)
                cell = comparison(chosen, against, setting)
                if cell is None:
                    continue
                rows.append((setting, label, reference, cell, _diff(chosen, against, "peak", test),
                             _diff(chosen, against, "final", test), reference == control))
            if control in STUDY_LABELS[study] and not select(runs, setting, control, study):
                missing.append(f"| {SETTING_TITLES[setting]} | {label} | {control} | not run | - | - | - | - |")
    if not rows:
        return []
    judged = judge([row[3] for row in rows])
    lines = [f"| setting | FedGMA | against | last-{LAST_ROUNDS} OOD diff (pts) | Holm p | label "
             "| diff at best-ID round | final OOD diff |", "|---|---|---|---|---|---|---|---|"]
    evidence: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for (setting, label, reference, cell, peak, final, is_control), (p, verdict) in zip(rows, judged, strict=True):
        lines.append(f"| {SETTING_TITLES[setting]} | {label} | {reference}"
                     f"{' (its no-mask control)' if is_control and reference == BASELINE else ''} "
                     f"| {cell.difference.format()} | {_p(p)} | {verdict} | {peak} | {final} |")
        if is_control:
            evidence[setting].append((verdict, f"{label} vs {reference}: {cell.difference.format()} *{verdict}*"))
    lines += missing
    tested = sum(p is not None for p, _ in judged)
    out = [*lines, "", f"{family_caption(tested)} Family: this table ({STUDY_TITLES[study]}). "
           "gma's no-mask control is FedAvg (its mask only shrinks FedAvg's step)."]
    if not evidence:
        return [*out, "", "No FedGMA run here has its no-mask control, so there is no verdict on the mask."]
    out += ["", f"The mask ({STUDY_TITLES[study]}), FedGMA against its no-mask control:", ""]
    for setting, items in evidence.items():
        out.append(f"- **{SETTING_TITLES[setting]}**: {overall([v for v, _ in items])} "
                   f"({'; '.join(text for _, text in items)})")
    return out


def colour_only_accuracy(setting: str, config: dict[str, Any]) -> float | None:
    """The ID accuracy that colour alone gives, where the setting makes it known: the binary
    colour shortcut the same for every client (1 - the ID test set's flip probability), the
    10-class task with colour fixing the class (1); else None."""
    settings = ALL_SETTINGS.get(setting, {})
    if settings.get("task") == "binary" and settings.get("shortcut", "color") == "color" \
            and not settings.get("shortcut-reversed-share", 0):
        return 1.0 - (float(config["color_flip_min"]) + float(config["color_flip_max"])) / 2
    if settings.get("task") == "ten-class" and "color-class-correlation" not in settings:
        return 1.0
    return None


def caveats(runs: list[Run], setting: str, labels: Sequence[str], study: str, colour_only: float | None) -> list[str]:
    """Notes generated from the data: arms whose primary test set accuracy swings by at least
    :data:`SWING_POINTS` between consecutive late rounds (their final value samples the swing), whose
    primary metric is below the untrained model's, or whose ID accuracy is below colour alone's
    (by more than :data:`~.verdicts.FLOOR_POINTS`)."""
    test = PRIMARY_TEST_SET[setting]
    name = _test_title(test)
    swinging, below_untrained, below_colour = [], [], []
    for label in labels:
        arm = select(runs, setting, label, study)
        if not arm:
            continue
        swing = _mean([r.swing(test) for r in arm])
        if swing is not None and swing >= SWING_POINTS:
            swinging.append(f"{label}: {swing:.0f}")
        value, untrained = _mean([r.primary(test) for r in arm]), _mean([r.untrained(test) for r in arm])
        if value is not None and untrained is not None and 100 * (untrained - value) > FLOOR_POINTS:
            below_untrained.append(f"{label} ({value:.2f} < {untrained:.2f})")
        id_value = _mean([r.primary("id") for r in arm])
        if colour_only is not None and id_value is not None and 100 * (colour_only - id_value) > FLOOR_POINTS:
            below_colour.append(f"{label} ({id_value:.2f})")
    notes = []
    if swinging:
        notes.append(f"*Final {name} accuracy is unreliable here*: over the last {LAST_ROUNDS} rounds it moves "
                     f"between consecutive rounds by a mean of at least {SWING_POINTS:g} points (mean over seeds; "
                     f"{'; '.join(swinging)}), so the final value samples that swing; the last-{LAST_ROUNDS} mean "
                     "is the primary metric.")
    if below_untrained:
        notes.append(f"*Below an untrained model* ({name}, last-{LAST_ROUNDS} mean under round 0's by more than "
                     f"{FLOOR_POINTS:g} points: it follows the shortcut): {', '.join(below_untrained)}.")
    if below_colour:
        notes.append(f"*ID accuracy below what colour alone gives* ({colour_only:.2f}; last-{LAST_ROUNDS} mean): "
                     f"{', '.join(below_colour)}.")
    return notes


def probe_table(runs: list[Run], probes: dict[str, dict[str, float]]) -> list[str]:
    """The colour probe of the 10-class final models (``fedgma probe``), by setting and strategy."""
    by_name = {r.name: r for r in runs}
    groups: dict[tuple[str, str], list[tuple[Run, dict[str, float]]]] = defaultdict(list)
    for name, probe in probes.items():
        if name in by_name:
            groups[(by_name[name].setting, by_name[name].strategy)].append((by_name[name], probe))
    if not groups:
        return []
    lines = ["| setting | strategy | runs | final ID acc | final OOD acc | follows shape | follows colour "
             "| neither |", "|---|---|---|---|---|---|---|---|"]
    order = list(ALL_SETTINGS)
    for (setting, strategy), members in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]),
                                                                                  list(ARMS).index(kv[0][1]))):
        chosen = [run for run, _ in members]
        lines.append(f"| {SETTING_TITLES[setting]} | {strategy} | {len(members)} "
                     f"| {mean_std([r.final_id for r in chosen])} | {mean_std([r.final('ood') for r in chosen])} | "
                     + " | ".join(mean_std([p[k] for _, p in members]) for k in ("follows-shape", "follows-colour",
                                                                                   "neither")) + " |")
    return lines


def probe_coverage(runs: list[Run], probes: dict[str, dict[str, float]]) -> str:
    """How many of the finished 10-class runs the probe covered."""
    ten_class = [r.name for r in runs if r.num_classes == 10]
    probed = sum(name in probes for name in ten_class)
    return (f"{probed} of the {len(ten_class)} finished 10-class runs were probed (`fedgma probe` probes every "
            "10-class run whose final model is on the machine; weights are not committed)")


def colour_only_note(runs: list[Run], probes: dict[str, dict[str, float]], setting: str) -> str:
    """A label for a setting whose probed final models all follow colour on at least
    :data:`COLOUR_ONLY` of the probe's images: its OOD accuracy cannot separate the methods."""
    settings = {r.name: r.setting for r in runs}
    shares = [p["follows-colour"] for name, p in probes.items() if settings.get(name) == setting]
    if not shares or min(shares) < COLOUR_ONLY:
        return ""
    return (f"; **colour only**: all {len(shares)} probed final models answer by colour on "
            f"{percent(min(shares))} to {percent(max(shares))} of the probe's images, so this setting cannot "
            "separate the methods")


def tau_table(runs: list[Run], default_tau: float) -> list[str]:
    lines = [f"| tau | seeds | OOD acc, last {LAST_ROUNDS} rounds | OOD acc at best-ID round | final OOD acc "
             "| final ID acc | mask kept (mean over rounds) |", "|---|---|---|---|---|---|---|"]
    by_tau: dict[float, list[Run]] = defaultdict(list)
    for run in tau_runs(runs):
        by_tau[run.tau if run.tau is not None else default_tau].append(run)
    for tau in sorted(by_tau):
        chosen = by_tau[tau]
        lines.append(f"| {tau:g} | {len(chosen)} | {mean_std([r.primary('ood') for r in chosen])} "
                     f"| {mean_std([r.peak('ood') for r in chosen])} | {mean_std([r.final('ood') for r in chosen])} "
                     f"| {mean_std([r.final_id for r in chosen])} | {mean_std([r.mask_kept for r in chosen])} |")
    return lines


def epochs_table(runs: list[Run]) -> list[str]:
    lines = [f"| local epochs | seeds | FedAvg OOD, last {LAST_ROUNDS} | FedGMA ws OOD, last {LAST_ROUNDS} "
             "| margin (pts) | FedAvg final OOD | FedGMA ws final OOD | final OOD margin (pts) |",
             "|---|---|---|---|---|---|---|---|"]
    epochs = sorted({r.local_epochs for r in runs if "epochs" in r.studies})
    primary = primary_of(ABLATION_SETTING)

    def final(run: Run) -> float | None:
        return run.final("ood")

    for e in epochs:
        avg = select(runs, ABLATION_SETTING, BASELINE, study="epochs", local_epochs=e)
        gma = select(runs, ABLATION_SETTING, ABLATION_WS, study="epochs", local_epochs=e)
        lines.append(f"| {e} | {min(len(avg), len(gma))} | {mean_std([primary(r) for r in avg])} "
                     f"| {mean_std([primary(r) for r in gma])} | {margin(gma, avg, primary)} "
                     f"| {mean_std([final(r) for r in avg])} | {mean_std([final(r) for r in gma])} "
                     f"| {margin(gma, avg, final)} |")
    return lines


def round_time_ratio(runs: list[Run]) -> tuple[float, float, float] | None:
    """Mean seconds per round of FedGMA (ws and gma) and of FedAvg over the main runs, and their ratio."""
    fedgma = [r.seconds_per_round for r in runs if "main" in r.studies and r.strategy.startswith("FedGMA ")
              and "Adam" not in r.strategy]
    fedavg = [r.seconds_per_round for r in runs if "main" in r.studies and r.strategy == BASELINE]
    if not fedgma or not fedavg:
        return None
    a, b = statistics.fmean(fedgma), statistics.fmean(fedavg)
    return a, b, a / b


def _hyperparameters(manifest: dict[str, Any], config: dict[str, Any]) -> list[str]:
    scale = manifest["scale"]
    clients = scale["clients"]
    rows = [
        ("base data set", f"{config['dataset']} (colored)"),
        ("clients / sampled per round", f"{clients} / {clients}"),
        ("training images (per client)", f"{scale['train_images']} ({scale['train_images'] // clients})"),
        ("central test sets (ID, OOD)", f"{scale['test_images']} images each"),
        ("rounds (binary / 10-class)", f"{scale['binary_rounds']} / {scale['ten_class_rounds']}"),
        ("local epochs, batch size, client SGD step", f"{config['local_epochs']} (ablation: 1, 3, 5), "
                                                      f"{config['batch_size']}, {config['client_lr']}"),
        ("FedGMA ws: tau, eta_s", "0.8, {0.01, 0.1, 1}"),
        ("FedGMA gma: tau, eta_s", "0.4, 1"),
        ("no-mask controls", "FedGMA ws with tau = 0 (every coordinate kept): FedAvg with server step 1 + eta_s"),
        ("paper's client step (binary settings)", f"SGD {PAPER_CLIENT_LR}: "
                                                  + ", ".join(PAPER_STEP_LABELS)),
        ("FedProx mu", f"{ARMS['FedProx, mu=0.01'][1]['proximal-mu']}"),
        ("FedAdam eta, beta_1, beta_2, tau", f"{config['adam_eta']}, {config['adam_beta_1']}, "
                                             f"{config['adam_beta_2']}, {config['adam_tau']}"),
        ("binary colours: client flip, OOD flip", f"[{config['color_flip_min']}, {config['color_flip_max']}], "
                                                  f"{config['ood_color_flip']}"),
        ("seeds", ", ".join(str(s) for s in scale["seeds"])),
    ]
    return ["| hyperparameter | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def build_markdown(results_dir: Path, figures_dir: Path, relative_to: Path) -> str:
    """The report as markdown; image links relative to ``relative_to``."""
    manifest = json.loads((results_dir / "grid.json").read_text())
    runs = load_runs(results_dir)
    if not runs:
        raise ValueError(f"{results_dir / 'results.csv'} holds no finished run yet")
    reference = next((r for r in runs if "main" in r.studies), runs[0])
    any_config = grid_run_folders(results_dir)[reference.name].read_config()
    dataset = any_config["dataset"]
    planned = len(manifest["runs"])
    probes = load_probes(results_dir)
    default_tau = float(cast(float, ARMS[ABLATION_WS][1]["tau"]))

    def link(name: str) -> str:
        return Path(os.path.relpath(figures_dir / name, relative_to)).as_posix()

    out = [
        f"#### Grid `{manifest['grid']}` on colored {dataset}: {len(runs)} of {planned} runs finished",
        "",
        *_hyperparameters(manifest, any_config),
        "",
        "```bash",
        f"fedgma grid run {manifest['grid']}" + "".join(f" {k}={v}" for k, v in manifest["overrides"].items()),
        f"fedgma report results/{manifest['grid']} --readme docs/experiments.md --figures docs/figures",
        "```",
        "",
        f"Accuracies are fractions (mean ± std over seeds). The primary metric is the mean OOD accuracy over the "
        f"last {LAST_ROUNDS} rounds; *at best-ID round* is the OOD accuracy at the first round of best ID accuracy "
        "(chosen without looking at the OOD test set); *final* is the last round's. Margins are OOD accuracy "
        "points over FedAvg (mean ± std of the per-seed differences; seeds share data, colours and initial model).",
    ]
    for setting in SETTINGS:
        if not any(r.setting == setting and "main" in r.studies for r in runs):
            continue
        some = select(runs, setting, BASELINE) or [r for r in runs if r.setting == setting]
        note = colour_only_note(runs, probes, setting)
        out += ["", f"**{SETTING_TITLES[setting]}, {len(some[0].trained)} rounds** (colored {dataset}){note}", ""]
        out += settings_table(runs, setting)
        notes = caveats(runs, setting, MAIN_LABELS, "main", colour_only_accuracy(setting, any_config))
        out += ["", *(f"- {note}" for note in notes)] if notes else []
    ratio = round_time_ratio(runs)
    if ratio:
        out += ["", f"Time per round (same runs, mean over rounds 2 and later): FedGMA {ratio[0]:.3f} s, "
                    f"FedAvg {ratio[1]:.3f} s, ratio {ratio[2]:.3f}. Grid runs may share the machine with other "
                    "work, which this ratio then carries; `fedgma bench --parts rounds` measures it with "
                    "both strategies alternating on an idle machine (docs/benchmarks.md)."]
    figure2 = figures_dir / "figure2.png"
    plot_settings(runs, FIGURE2_LABELS, figure2,
                  f"OOD accuracy per round, colored {dataset} (mean over seeds, min-max shaded; "
                  "dashed: no-mask control)")
    plot_settings(runs, BASELINE_LABELS, figures_dir / "baselines.png",
                  f"FedGMA against Flower's baselines, colored {dataset} (mean over seeds, min-max shaded)")
    out += ["", f"![OOD accuracy per round, FedAvg and FedGMA]({link('figure2.png')})",
            "", f"![FedGMA against Flower's baselines]({link('baselines.png')})"]
    client_lr = any_config["client_lr"]
    comparisons = mask_comparisons(runs, "main")
    if comparisons:
        out += ["", f"**Does the mask matter? Client step {client_lr:g}** (colored {dataset}; differences in OOD "
                f"accuracy points, last-{LAST_ROUNDS}-round mean, mean [95 % interval] over paired seeds)", "",
                *comparisons]
    paper_step = [r for r in runs if "client-step" in r.studies]
    if paper_step:
        step = paper_step[0].client_lr
        for setting in PAPER_STEP_SETTINGS:
            some = select(runs, setting, BASELINE, "client-step") or [r for r in paper_step if r.setting == setting]
            if some:
                out += ["", f"**{SETTING_TITLES[setting]}, the paper's client step {step:g}, "
                            f"{len(some[0].trained)} rounds** (colored {dataset})", ""]
                out += settings_table(runs, setting, "client-step")
                notes = caveats(runs, setting, PAPER_STEP_LABELS, "client-step",
                                colour_only_accuracy(setting, any_config))
                out += ["", *(f"- {note}" for note in notes)] if notes else []
        plot_settings(runs, PAPER_STEP_LABELS, figures_dir / "client_step.png",
                      f"OOD accuracy per round at the paper's client step {step:g}, colored {dataset} "
                      "(mean over seeds, min-max shaded; dashed: no-mask controls)",
                      study="client-step", settings=PAPER_STEP_SETTINGS)
        out += ["", f"![OOD accuracy per round at the paper's client step]({link('client_step.png')})"]
        comparisons = mask_comparisons(runs, "client-step")
        if comparisons:
            out += ["", f"**Does the mask matter? The paper's client step {step:g}** (colored {dataset})", ""]
            out += comparisons
    if probe_lines := probe_table(runs, probes):
        images = next(iter(probes.values()))["images"]
        out += ["", f"**What the 10-class models learn** (colored {dataset}; `fedgma probe`): each run's final "
                f"model on its {images} central test images, each painted in the training colours of another "
                "class. *Follows shape*: it answers the image's class; *follows colour*: the class whose "
                f"colours the image wears (chance: 0.10 and 0.10). {probe_coverage(runs, probes)}.", "",
                *probe_lines]
    if any("tau" in r.studies for r in runs):
        out += ["", f"**Ablation: tau** (binary non-IID, FedGMA ws, eta_s = 1, colored {dataset})", ""]
        out += tau_table(runs, default_tau)
    if any("epochs" in r.studies for r in runs):
        out += ["", f"**Ablation: local epochs** (binary non-IID, colored {dataset})", ""]
        out += epochs_table(runs)
    if any(s in r.studies for r in runs for s in ("tau", "epochs")):
        plot_ablations(runs, default_tau, figures_dir / "ablations.png", dataset)
        out += ["", f"![Ablations: tau and local epochs]({link('ablations.png')})"]
    return "\n".join(out) + "\n"


def _planned(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Planned seeds per setting and arm, in the grid's order."""
    planned: dict[str, dict[str, int]] = defaultdict(dict)
    for run in manifest["runs"]:
        arms = planned[run["setting"]]
        arms[run["strategy"]] = arms.get(run["strategy"], 0) + 1
    return planned


def _references(label: str, labels: Sequence[str]) -> list[tuple[str, str]]:
    """A FedGMA arm's references in a setting that plans them: (role, arm)."""
    control = NO_MASK_CONTROLS[label]
    references = [("FedAvg and no-mask control" if control == BASELINE else "FedAvg", BASELINE)]
    if control != BASELINE:
        references.append(("no-mask control", control))
    references.append(("random mask", RANDOM_CONTROLS[label]))
    if label in STEP_CONTROLS:
        references.append(("uniform step", STEP_CONTROLS[label]))
    return [(role, reference) for role, reference in references if reference in labels]


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _last(arm: list[Run], column: str) -> float | None:
    return _mean([r.last_mean(column) for r in arm])


@dataclass
class SettingVerdict:
    """What one setting of the when grid says about the mask."""

    word: str  # helps, hurts, mixed, does nothing, not measurable, inconclusive, too few seeds, not run
    decisive: list[str]  # the comparisons labelled helps or hurts
    reasons: list[str]  # per FedGMA arm: kept fraction, labels against its controls


def when_setting(runs: list[Run], setting: str, planned: dict[str, int]) -> tuple[list[str], SettingVerdict]:
    """One setting of the when grid: its arms' table, its comparisons' table and its verdict."""
    test = PRIMARY_TEST_SET[setting]
    name = _test_title(test)
    secondary = test != "ood"
    arms = {label: select(runs, setting, label, "when") for label in planned}
    lines = [f"| arm | seeds | {name} acc, last {LAST_ROUNDS} rounds | at best-ID round | final "
             f"| ID acc, last {LAST_ROUNDS} |" + (f" OOD acc, last {LAST_ROUNDS} |" if secondary else "")
             + f" mask kept, last {LAST_ROUNDS} | mask mean | kept red / green / blue |",
             "|---|---|---|---|---|---|" + ("---|" if secondary else "") + "---|---|---|"]
    for label, arm in arms.items():
        if not arm:
            lines.append(f"| {label} | not run (0 of {planned[label]}) | - | - | - | - |"
                         + (" - |" if secondary else "") + " - | - | - |")
            continue
        channels = [_last(arm, c) for c in MASK_CHANNELS]
        lines.append(f"| {label} | {len(arm)} of {planned[label]} | {mean_std([r.primary(test) for r in arm])} "
                     f"| {mean_std([r.peak(test) for r in arm])} | {mean_std([r.final(test) for r in arm])} "
                     f"| {mean_std([r.primary('id') for r in arm])} |"
                     + (f" {mean_std([r.primary('ood') for r in arm])} |" if secondary else "")
                     + f" {_fraction(_last(arm, 'mask-kept-fraction'))} | {_fraction(_last(arm, 'mask-mean'))} "
                     f"| {' / '.join(_fraction(c) for c in channels) if any(channels) else '-'} |")
    rows: list[tuple[str, str, str, Cell | None]] = []
    for label in (a for a in RANDOM_CONTROLS if a in planned):
        for role, reference in _references(label, list(planned)):
            rows.append((label, role, reference, comparison(arms[label], arms[reference], setting)
                         if arms[label] and arms[reference] else None))
    cells = [cell for *_, cell in rows if cell is not None]
    judged = iter(judge(cells))
    table = [f"| FedGMA arm | against | as its | last-{LAST_ROUNDS} {name} diff (pts) | Holm p | label |",
             "|---|---|---|---|---|---|"]
    mask_labels: dict[str, list[tuple[str, str]]] = defaultdict(list)
    decisive = []
    for label, role, reference, cell in rows:
        if cell is None:
            table.append(f"| {label} | {reference} | {role} | not run | - | - |")
            continue
        p, verdict = next(judged)
        table.append(f"| {label} | {reference} | {role} | {cell.difference.format()} | {_p(p)} | {verdict} |")
        if role != "FedAvg":  # the mask's comparisons: with its controls
            role = role.removeprefix("FedAvg and ")
            mask_labels[label].append((role, verdict))
            if verdict in (HELPS, HURTS):
                decisive.append(f"{label} vs its {role}: {cell.difference.format()} *{verdict}*")
    reasons = []
    for label, items in mask_labels.items():
        kept, random_kept = _last(arms[label], "mask-kept-fraction"), _last(arms[RANDOM_CONTROLS[label]],
                                                                            "mask-kept-fraction")
        keeps = "" if kept is None else f" keeps {percent(kept)} of coordinates" + (
            "" if random_kept is None else f" (its random mask {percent(random_kept)})") + ";"
        reasons.append(f"{label}:{keeps} " + ", ".join(f"vs its {role} *{verdict}*" for role, verdict in items))
    word = overall([v for items in mask_labels.values() for _, v in items]) if any(arms.values()) else "not run"
    tested = sum(p is not None for p, _ in judge(cells))
    out = [*lines, "", *table, "", f"Holm over this table's {tested} measurable comparisons with two or more seeds "
           "(one family)."]
    return out, SettingVerdict(word, decisive, reasons)


WORDS = {HELPS: "the mask helps", HURTS: "the mask hurts", "mixed": "mixed (helps in one comparison, hurts in "
         "another)", "does nothing": "the mask does nothing (every comparison equivalent)"}


def build_when_markdown(results_dir: Path, figures_dir: Path, relative_to: Path) -> tuple[str, str]:
    """The when grid's tables (for docs/experiments.md and report.md) and its short summary (for
    the README), as markdown; image links relative to ``relative_to``."""
    if not (results_dir / "results.csv").is_file():
        return when_not_run()
    manifest = json.loads((results_dir / "grid.json").read_text())
    runs = load_runs(results_dir)
    if not runs:
        return when_not_run()
    config = grid_run_folders(results_dir)[runs[0].name].read_config()
    dataset = config["dataset"]
    planned = _planned(manifest)
    settings = [s for s in WHEN_ORDER if s in planned]
    out = [f"#### Grid `when` on colored {dataset}: {len(runs)} of {len(manifest['runs'])} runs finished", "",
           f"Per setting, in the grid's order: each arm's primary metric (accuracy on the setting's primary test "
           f"set, mean of the last {LAST_ROUNDS} rounds; mean ± std over seeds), the accuracy at the first round "
           f"of best ID accuracy and after the last round, the mask's kept fraction and mean over the last "
           f"{LAST_ROUNDS} rounds (and per input colour channel of the first convolution where recorded); then "
           "each FedGMA arm minus FedAvg, its no-mask control, its random mask and (gma) its uniform step, in "
           "points (paired seeds, mean [95 % interval]).", "", family_caption(None), ""]
    verdicts: dict[str, SettingVerdict] = {}
    for setting in settings:
        some = next((r for r in runs if r.setting == setting), None)
        if some is None:
            out += [f"**{SETTING_TITLES[setting]}**: not run (0 of {sum(planned[setting].values())} runs).", ""]
            verdicts[setting] = SettingVerdict("not run", [], [])
            continue
        out += [f"**{SETTING_TITLES[setting]}**, {len(some.trained)} rounds (primary test set: "
                f"{PRIMARY_TEST_SET[setting]}; colored {dataset})", ""]
        lines, verdicts[setting] = when_setting(runs, setting, planned[setting])
        notes = caveats(runs, setting, list(planned[setting]), "when", colour_only_accuracy(setting, config))
        out += [*lines, "", *(f"- {note}" for note in notes), *([""] if notes else [])]
    present = tuple(s for s in settings if any(r.setting == s for r in runs))
    plot_settings(runs, WHEN_LABELS, figures_dir / "when.png",
                  f"Primary test set accuracy per round, colored {dataset} (mean over seeds, min-max shaded; "
                  "dashed: no-mask controls)", study="when", settings=present)
    link = Path(os.path.relpath(figures_dir / "when.png", relative_to)).as_posix()
    out += [f"![Primary test set accuracy per round, the when grid]({link})", "",
            "**When does the mask help?** (generated from the tables above: the labels of each FedGMA arm "
            "against its no-mask control, random mask and uniform step)", ""]
    summary = [f"**When does the mask help?** From the `when` grid on colored {dataset} ({len(runs)} of "
               f"{len(manifest['runs'])} runs; FedGMA against its no-mask, random-mask and uniform-step "
               f"controls, last-{LAST_ROUNDS}-round accuracy on each setting's primary test set, Holm per "
               "setting; tables in [docs/experiments.md](docs/experiments.md)):", ""]
    for setting, verdict in verdicts.items():
        word = WORDS.get(verdict.word, verdict.word)
        out.append(f"- **{SETTING_TITLES[setting]}**: {word}" + (f" ({'; '.join(verdict.reasons)})"
                                                                 if verdict.reasons else ""))
        summary.append(f"- **{SETTING_TITLES[setting]}**: {word}" + (f" ({'; '.join(verdict.decisive)})"
                                                                     if verdict.decisive else ""))
    return "\n".join(out) + "\n", "\n".join(summary) + "\n"


def when_not_run() -> tuple[str, str]:
    """The when grid's blocks before any of its runs has finished."""
    return (f"The `when` grid has not run yet (no finished run in `results/when`); `{WHEN_COMMAND}` fills this "
            "block from it.\n",
            "**When does the mask help?** Not measured yet: the `when` grid (opposite, majority-sign and private "
            "shortcuts, full and partial participation, with random-mask and uniform-step controls) has not "
            "run. Its tables will be in [docs/experiments.md](docs/experiments.md).\n")


def write_readme_block(readme: Path, block: str, begin: str = BEGIN, end: str = END) -> None:
    """Put ``block`` between the README's markers (by default the results markers :data:`BEGIN`, :data:`END`)."""
    try:
        readme.write_text(replace_block(readme.read_text(), begin, end, block))
    except ValueError as err:
        raise ValueError(f"{readme}: {err}") from None


def grid_name(results_dir: Path) -> str:
    """The grid a results folder holds (its ``grid.json``; before that, the folder's name)."""
    manifest = results_dir / "grid.json"
    return str(json.loads(manifest.read_text())["grid"]) if manifest.is_file() else results_dir.name


def write_report(results_dir: Path, figures_dir: Path | None = None, readme: Path | Sequence[Path] | None = None,
                 markdown: Path | None = None) -> Path | None:
    """Write the markdown report (and the README blocks); returns the markdown path (None for the
    when grid before it has run: then only the README blocks are written)."""
    results_dir = results_dir.resolve()
    figures_dir = (figures_dir or results_dir / "figures").resolve()
    readmes = [] if readme is None else [readme] if isinstance(readme, Path) else list(readme)
    if grid_name(results_dir) == WHEN_GRID:
        return _write_when_report(results_dir, figures_dir, [r.resolve() for r in readmes], markdown)
    markdown = (markdown or results_dir / "report.md").resolve()
    text = build_markdown(results_dir, figures_dir, markdown.parent)
    markdown.write_text(text)
    print(f"report: {markdown}; figures in {figures_dir}")
    for path in (r.resolve() for r in readmes):
        write_readme_block(path, build_markdown(results_dir, figures_dir, path.parent))
        print(f"report: results block of {path} replaced")
    return markdown


def _write_when_report(results_dir: Path, figures_dir: Path, readmes: list[Path],
                       markdown: Path | None) -> Path | None:
    written = None
    if (results_dir / "results.csv").is_file():
        written = (markdown or results_dir / "report.md").resolve()
        tables, summary = build_when_markdown(results_dir, figures_dir, written.parent)
        written.write_text(f"{summary}\n{tables}")
        print(f"report: {written}; figures in {figures_dir}")
    else:
        print(f"report: {results_dir} holds no finished run of the when grid yet; the README blocks say so")
    for path in readmes:
        tables, summary = build_when_markdown(results_dir, figures_dir, path.parent)
        text = path.read_text()
        blocks = [(b, e, block) for b, e, block in ((WHEN_BEGIN, WHEN_END, tables),
                                                    (SUMMARY_BEGIN, SUMMARY_END, summary)) if b in text]
        if not blocks:
            raise ValueError(f"{path}: no {WHEN_BEGIN} or {SUMMARY_BEGIN} block to replace")
        for begin, end, block in blocks:
            write_readme_block(path, block, begin, end)
        print(f"report: when blocks of {path} replaced")
    return written
