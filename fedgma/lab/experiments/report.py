"""Tables and plots from a grid's ``results.csv`` (``fedgma report``).

Nothing here is typed by hand: every number comes from the CSV, every
hyperparameter from the grid's ``grid.json`` and the runs' ``config.json``.
Seeds are paired (same data split, colours and initial model per seed), so
the margin over FedAvg is the mean +- std of the per-seed differences.
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from .comparisons import (
    caveats,
    colour_only_accuracy,
    comparison,
    p_text,
    paired_text,
    primary_of,
    probe_coverage,
    probe_table,
    test_title,
    write_block,
)
from .figures import plot_ablations, plot_settings
from .grids import (
    ABLATION_SETTING,
    ABLATION_WS,
    ARMS,
    BASELINE,
    MAIN_LABELS,
    NO_MASK_CONTROLS,
    PAPER_CLIENT_LR,
    PAPER_STEP_LABELS,
    PAPER_STEP_SETTINGS,
    PRIMARY_TEST_SET,
    SETTING_TITLES,
    SETTINGS,
)
from .results import GRID_FILE, grid_run_folders, load_probes, percent, read_manifest
from .runs import LAST_ROUNDS, Run, load_runs, margin, mean_std, select, tau_runs
from .verdicts import Cell, family_caption, judge, overall
from .when_report import SUMMARY_BEGIN as WHEN_SUMMARY_BEGIN
from .when_report import WHEN_BEGIN, WHEN_GRID, write_when_report

FIGURE2_LABELS = (BASELINE, "FedGMA ws, eta_s=0.01", "FedGMA ws, eta_s=0.1", "FedGMA ws, eta_s=1",
                  "FedGMA gma, tau=0.4", NO_MASK_CONTROLS["FedGMA ws, eta_s=1"])
STUDY_LABELS = {"main": MAIN_LABELS, "client-step": PAPER_STEP_LABELS}
STUDY_TITLES = {"main": "the grid's client step", "client-step": "the paper's client step"}
BASELINE_LABELS = (BASELINE, "FedGMA ws, eta_s=1", "FedProx, mu=0.01", "FedAdam", "FedGMA gma + FedAdam")
COLOUR_ONLY = 0.9  # share of probe images answered by colour above which a model "follows colour"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"  # the full grid's block (docs/experiments.md)
# The full grid's short answer (README.md).
SUMMARY_BEGIN, SUMMARY_END = "<!-- full-summary:begin -->", "<!-- full-summary:end -->"
FULL_COMMAND = "fedgma report results/full --readme README.md --readme docs/experiments.md --figures docs/figures"






def settings_table(runs: list[Run], setting: str, study: str = "main") -> list[str]:
    test = PRIMARY_TEST_SET[setting]
    name = test_title(test)
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












_Row = tuple[str, str, str, Cell, str, str, bool]  # setting, FedGMA arm, reference, cell, peak, final, is control


def _mask_rows(runs: list[Run], study: str) -> tuple[list[_Row], list[str]]:
    """Each FedGMA run against FedAvg and against its no-mask control, and the table rows of
    controls not run."""
    rows: list[_Row] = []
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
                rows.append((setting, label, reference, cell, paired_text(chosen, against, "peak", test),
                             paired_text(chosen, against, "final", test), reference == control))
            if control in STUDY_LABELS[study] and not select(runs, setting, control, study):
                missing.append(f"| {SETTING_TITLES[setting]} | {label} | {control} | not run | - | - | - | - |")
    return rows, missing


def mask_verdicts(runs: list[Run], study: str) -> dict[str, tuple[str, list[str]]]:
    """Per setting: the mask's verdict from FedGMA against its no-mask controls (labels judged with
    Holm over :func:`mask_comparisons`' whole table), and the comparisons behind it."""
    rows, _ = _mask_rows(runs, study)
    return _verdicts(rows, judge([row[3] for row in rows]))


def _verdicts(rows: list[_Row], judged: list[tuple[float | None, str]]) -> dict[str, tuple[str, list[str]]]:
    """:func:`mask_verdicts` from rows already judged."""
    evidence: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for (setting, label, reference, cell, *_, is_control), (_, verdict) in zip(rows, judged, strict=True):
        if is_control:
            evidence[setting].append((verdict, f"{label} vs {reference}: {cell.difference.format()} *{verdict}*"))
    return {setting: (overall([v for v, _ in items]), [text for _, text in items])
            for setting, items in evidence.items()}


def mask_comparisons(runs: list[Run], study: str) -> list[str]:
    """Per setting: each FedGMA run against FedAvg and against its no-mask control (paired
    per-seed differences of the primary metric, 95 % intervals, Holm over the table), then a
    one-line verdict on the mask from the comparisons with the controls."""
    rows, missing = _mask_rows(runs, study)
    if not rows:
        return []
    judged = judge([row[3] for row in rows])
    lines = [f"| setting | FedGMA | against | last-{LAST_ROUNDS} OOD diff (pts) | Holm p | label "
             "| diff at best-ID round | final OOD diff |", "|---|---|---|---|---|---|---|---|"]
    for (setting, label, reference, cell, peak, final, is_control), (p, verdict) in zip(rows, judged, strict=True):
        lines.append(f"| {SETTING_TITLES[setting]} | {label} | {reference}"
                     f"{' (its no-mask control)' if is_control and reference == BASELINE else ''} "
                     f"| {cell.difference.format()} | {p_text(p)} | {verdict} | {peak} | {final} |")
    lines += missing
    tested = sum(p is not None for p, _ in judged)
    out = [*lines, "", f"{family_caption(tested)} Family: this table ({STUDY_TITLES[study]}). "
           "gma's no-mask control is FedAvg (its mask only shrinks FedAvg's step)."]
    verdicts = _verdicts(rows, judged)
    if not verdicts:
        return [*out, "", "No FedGMA run here has its no-mask control, so there is no verdict on the mask."]
    out += ["", f"The mask ({STUDY_TITLES[study]}), FedGMA against its no-mask control:", ""]
    for setting, (word, texts) in verdicts.items():
        out.append(f"- **{SETTING_TITLES[setting]}**: {word} ({'; '.join(texts)})")
    return out


def full_summary(runs: list[Run], dataset: str) -> str:
    """The README's short answer from the full grid: per client step, each setting's verdict on the
    mask (FedGMA against its no-mask control), the comparisons labelled helps or hurts spelled out."""
    out = [f"**Does the mask matter?** From the full grid on colored {dataset} (FedGMA against its no-mask "
           f"control, OOD accuracy averaged over the last {LAST_ROUNDS} rounds, paired seeds, Holm per table; "
           "tables and the labels' meaning in [docs/experiments.md](docs/experiments.md)):", ""]
    for study in STUDY_LABELS:
        verdicts = mask_verdicts(runs, study)
        steps = sorted({r.client_lr for r in runs if study in r.studies and r.client_lr is not None})
        if not verdicts:
            continue
        words = "; ".join(f"{SETTING_TITLES[setting]} *{word}*" for setting, (word, _) in verdicts.items())
        decisive = [text for _, texts in verdicts.values() for text in texts if "*helps*" in text or "*hurts*" in text]
        step = f" ({', '.join(f'{v:g}' for v in steps)})" if steps else ""
        out.append(f"- {STUDY_TITLES[study].capitalize()}{step}: {words}"
                   + (f". Decisive: {'; '.join(decisive)}" if decisive else ". No comparison is labelled *helps* "
                      "or *hurts*") + ".")
    return "\n".join(out) + "\n"


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
    manifest = read_manifest(results_dir)
    if manifest is None:
        raise ValueError(f"{results_dir / GRID_FILE} does not exist: not a grid's results folder")
    runs = load_runs(results_dir)
    if not runs:
        raise ValueError(f"{results_dir / 'results.csv'} holds no finished run yet")
    reference = next((r for r in runs if "main" in r.studies), runs[0])
    folders = grid_run_folders(results_dir, manifest)
    any_config = folders[reference.name].read_config()
    dataset = any_config["dataset"]
    planned = len(manifest["runs"])
    probes = load_probes(folders)
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
        FULL_COMMAND if manifest["grid"] == "full" else
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






















def build_summary(results_dir: Path) -> str:
    """:func:`full_summary` of the grid in ``results_dir``."""
    runs = load_runs(results_dir)
    if not runs:
        raise ValueError(f"{results_dir / 'results.csv'} holds no finished run yet")
    return full_summary(runs, str(grid_run_folders(results_dir)[runs[0].name].read_config()["dataset"]))


def grid_name(results_dir: Path) -> str:
    """The grid a results folder holds (its manifest; before that, the folder's name)."""
    manifest = read_manifest(results_dir)
    return results_dir.name if manifest is None else str(manifest["grid"])


def write_report(results_dir: Path, figures_dir: Path | None = None, readme: Path | Sequence[Path] | None = None,
                 markdown: Path | None = None) -> Path | None:
    """Write the markdown report (and the README blocks); returns the markdown path (None for the
    when grid before it has run: then only the README blocks are written)."""
    results_dir = results_dir.resolve()
    figures_dir = (figures_dir or results_dir / "figures").resolve()
    readmes = [] if readme is None else [readme] if isinstance(readme, Path) else list(readme)
    when = grid_name(results_dir) == WHEN_GRID
    for path in readmes:  # before anything is written
        begins = (WHEN_BEGIN, WHEN_SUMMARY_BEGIN) if when else (BEGIN, SUMMARY_BEGIN)
        if not any(begin in path.read_text() for begin in begins):
            raise ValueError(f"{path}: no {' or '.join(begins)} block to replace")
    if when:
        return write_when_report(results_dir, figures_dir, [r.resolve() for r in readmes], markdown)
    markdown = (markdown or results_dir / "report.md").resolve()
    text = build_markdown(results_dir, figures_dir, markdown.parent)
    markdown.write_text(text)
    print(f"report: {markdown}; figures in {figures_dir}")
    for path in (r.resolve() for r in readmes):
        text = path.read_text()
        if BEGIN in text:
            write_block(path, build_markdown(results_dir, figures_dir, path.parent), BEGIN, END)
            print(f"report: results block of {path} replaced")
        if SUMMARY_BEGIN in text:
            write_block(path, build_summary(results_dir), SUMMARY_BEGIN, SUMMARY_END)
            print(f"report: summary block of {path} replaced")
    return markdown


