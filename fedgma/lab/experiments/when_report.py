"""The when grid's report (``fedgma report results/when``): per setting, each arm's primary
metric and mask statistics, each FedGMA arm against FedAvg, its no-mask control, its random mask
and (gma) its uniform step, and the generated answer to "when does the mask help?" for
docs/experiments.md and the README. Works on a partly finished grid."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedgma.app.run_folder import RunFolder

from .comparisons import (
    caveats,
    colour_only_accuracy,
    comparison,
    mean_or_none,
    p_text,
    probe_coverage,
    probe_table,
    rise_note,
    test_title,
    write_block,
)
from .figures import plot_settings
from .grids import (
    ABLATION_SETTING,
    ALL_SETTINGS,
    BASELINE,
    NO_MASK_CONTROLS,
    PAPER_CLIENT_LR,
    PRIMARY_TEST_SET,
    RANDOM_CONTROLS,
    SETTING_TITLES,
    STEP_CONTROLS,
    WHEN_LABELS,
    WHEN_SETTINGS,
    grid_by_name,
)
from .pace import RunClock, kind_of, pace
from .results import grid_run_folders, load_probes, percent, read_manifest
from .runner import format_seconds
from .runs import LAST_ROUNDS, Run, load_runs, mean_std, select
from .verdicts import (
    EQUIVALENT,
    HELPS,
    HURTS,
    INCONCLUSIVE,
    NOT_MEASURABLE,
    TOO_FEW,
    Cell,
    family_caption,
    judge,
    overall,
)

WHEN_GRID = "when"
# Its blocks: the tables (docs/experiments.md) and the summary (README.md).
WHEN_BEGIN, WHEN_END = "<!-- when-results:begin -->", "<!-- when-results:end -->"
SUMMARY_BEGIN, SUMMARY_END = "<!-- when-summary:begin -->", "<!-- when-summary:end -->"
WHEN_COMMAND = "fedgma report results/when --readme README.md --readme docs/experiments.md --figures docs/figures"
# The when grid's settings in its order: the binary relations, the full grid's binary non-IID, 10-class.
WHEN_ORDER: tuple[str, ...] = (*(s for s in WHEN_SETTINGS if not s.startswith("ten-class")), ABLATION_SETTING,
                               *(s for s in WHEN_SETTINGS if s.startswith("ten-class")))
MASK_CHANNELS = ("mask-kept-red", "mask-kept-green", "mask-kept-blue")
# The first convolution's input channels that carry a setting's shortcut: the markers are drawn in
# blue alone; colour tints red and green (which carry the garment's shape as well).
SHORTCUT_CHANNELS = {"marker": ("marker channel", ("mask-kept-blue",)),
                     "color": ("colour channels", ("mask-kept-red", "mask-kept-green"))}
# The FedGMA arms whose mask the README's summary explains: the workshop rule at the paper's step, gma.
EXPLAINED_ARMS = ("FedGMA ws, eta_s=1", "FedGMA gma, tau=0.4")


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
    return mean_or_none([r.last_mean(column) for r in arm])


@dataclass
class SettingVerdict:
    """What one setting of the when grid says about the mask."""

    word: str  # helps, hurts, mixed, does nothing, not measurable, inconclusive, too few seeds, not run
    decisive: list[str]  # the comparisons labelled helps or hurts
    reasons: list[str]  # per FedGMA arm: kept fraction, labels against its controls
    why: list[str]  # per explained arm: what its mask kept, and it against its random mask
    labels: list[str] = field(default_factory=list)  # the labels of the mask's comparisons
    undecided: list[str] = field(default_factory=list)  # the comparisons labelled inconclusive

    def wording(self) -> str:
        """The word as the README and the docs say it; "does nothing" with its widest equivalence."""
        if self.word == "does nothing":
            widest = max(float(v.removeprefix(EQUIVALENT).split()[0]) for v in self.labels if v.startswith(EQUIVALENT))
            few = sum(v == TOO_FEW for v in self.labels)  # not counted: an arm with one seed so far
            which = "every comparison with two or more seeds" if few else "every comparison"
            unjudged = f"; {few} with one seed, not judged" if few else ""
            return (f"the mask does nothing ({which} equivalent, the widest within {widest:g} "
                    f"point{'' if widest == 1 else 's'}{unjudged})")
        return WORDS.get(self.word, self.word)

    def shown(self) -> list[str]:
        """The comparisons behind the word: those labelled helps or hurts, else, where the word is
        inconclusive, the inconclusive ones."""
        return self.decisive or (self.undecided if self.word == INCONCLUSIVE else [])


def when_setting(runs: list[Run], setting: str, planned: dict[str, int]) -> tuple[list[str], SettingVerdict]:
    """One setting of the when grid: its arms' table, its comparisons' table and its verdict."""
    test = PRIMARY_TEST_SET[setting]
    name = test_title(test)
    secondary = test != "ood"
    arms = {label: select(runs, setting, label, "when") for label in planned}
    lines = [f"| arm | seeds | {name} acc, last {LAST_ROUNDS} rounds | at best-ID round | final "
             f"| ID acc, last {LAST_ROUNDS} |" + (f" OOD acc, last {LAST_ROUNDS} |" if secondary else "")
             + f" mask kept, last {LAST_ROUNDS} | mask mean | kept red / green / blue |",
             "|---|---|---|---|---|---|" + ("---|" if secondary else "") + "---|---|---|"]
    for label, arm in arms.items():
        if not arm:
            lines.append(f"| {label} | not run yet (0 of {planned[label]}) | - | - | - | - |"
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
    decisive: list[str] = []
    undecided: list[str] = []
    against_random: dict[str, str] = {}
    for label, role, reference, cell in rows:
        if cell is None:
            table.append(f"| {label} | {reference} | {role} | not run yet | - | - |")
            continue
        p, verdict = next(judged)
        table.append(f"| {label} | {reference} | {role} | {cell.difference.format()} | {p_text(p)} | {verdict} |")
        if role == "random mask":
            against_random[label] = cell.difference.format()
        if role != "FedAvg":  # the mask's comparisons: with its controls
            role = role.removeprefix("FedAvg and ")
            mask_labels[label].append((role, verdict))
            said = f"{label} vs its {role}: {cell.difference.format()} *{verdict}*"
            if verdict in (HELPS, HURTS):
                decisive.append(said)
            elif verdict == INCONCLUSIVE:
                undecided.append(said)
    reasons = []
    for label, items in mask_labels.items():
        kept, random_kept = _last(arms[label], "mask-kept-fraction"), _last(arms[RANDOM_CONTROLS[label]],
                                                                            "mask-kept-fraction")
        keeps = "" if kept is None else f" keeps {percent(kept)} of coordinates" + (
            "" if random_kept is None else f" (its random mask {percent(random_kept)})") + ";"
        reasons.append(f"{label}:{keeps} " + ", ".join(f"vs its {role} *{verdict}*" for role, verdict in items))
    word = ("not run" if not any(arms.values()) else NO_CONTROL_YET if not mask_labels
            else overall([v for items in mask_labels.values() for _, v in items]))
    tested = sum(p is not None for p, _ in judge(cells))
    out = [*lines, "", *table, "", f"Holm over this table's {tested} measurable comparisons with two or more seeds "
           "(one family)."]
    return out, SettingVerdict(word, decisive, reasons, _why(arms, setting, against_random),
                               [v for items in mask_labels.values() for _, v in items], undecided)


def _why(arms: dict[str, list[Run]], setting: str, against_random: dict[str, str]) -> list[str]:
    """What the explained arms' masks kept over the last rounds (of all coordinates and of the first
    layer's weights on the shortcut's input channels) and how each did against its random mask."""
    name, channels = SHORTCUT_CHANNELS[str(ALL_SETTINGS[setting].get("shortcut", "color"))]
    why = []
    for label in (a for a in EXPLAINED_ARMS if arms.get(a)):
        kept = _last(arms[label], "mask-kept-fraction")
        if kept is None:
            continue
        on_shortcut = [value for c in channels if (value := _last(arms[label], c)) is not None]
        text = f"{label.removeprefix('FedGMA ')} keeps {percent(kept)}" + (
            f" ({name} {percent(sum(on_shortcut) / len(on_shortcut))})" if on_shortcut else "")
        if label in against_random:
            random_kept = _last(arms.get(RANDOM_CONTROLS[label], []), "mask-kept-fraction")
            text += f", {against_random[label]} pts against its random mask" + (
                "" if random_kept is None else f" (which kept {percent(random_kept)})")
        why.append(text)
    return why


NO_CONTROL_YET = "no control finished yet"
# Runs of the full grid that the when grid reuses as they are (binary non-IID references).
FULL_GRID_RUNS = frozenset(spec.name for spec in grid_by_name("full").runs)
WORDS = {HELPS: "the mask helps", HURTS: "the mask hurts", "mixed": "mixed (helps in one comparison, hurts in "
         "another)", "not run": "not run yet"}


def build_when_markdown(results_dir: Path, figures_dir: Path, relative_to: Path) -> tuple[str, str]:
    """The when grid's tables (for docs/experiments.md and report.md) and its short summary (for
    the README), as markdown; image links relative to ``relative_to``."""
    if not (results_dir / "results.csv").is_file():
        return when_not_run()
    manifest = read_manifest(results_dir)
    runs = load_runs(results_dir)
    if manifest is None or not runs:
        return when_not_run()
    folders = grid_run_folders(results_dir, manifest)
    config = folders[runs[0].name].read_config()
    dataset = config["dataset"]
    planned = _planned(manifest)
    settings = [s for s in WHEN_ORDER if s in planned]
    cut = len(manifest.get("cut", []))
    cut_said = f" ({cut} more were planned and cut to fit the grid's budget)" if cut else ""
    out = [f"#### Grid `when` on colored {dataset}: {len(runs)} of {len(manifest['runs'])} runs finished{cut_said}", "",
           run_time(folders, runs, int(manifest["scale"]["clients"])), "",
           "Per setting (the designed-for settings, the contrasts, 10-class): each arm's primary metric "
           f"(accuracy on the setting's primary test set, mean of the last {LAST_ROUNDS} rounds; mean ± std "
           "over seeds), the accuracy at the first round "
           f"of best ID accuracy and after the last round, the mask's kept fraction and mean over the last "
           f"{LAST_ROUNDS} rounds (and per input colour channel of the first convolution where recorded); then "
           "each FedGMA arm minus FedAvg, its no-mask control, its random mask and (gma) its uniform step, in "
           "points (paired seeds, mean [95 % interval]).", "", family_caption(None), ""]
    verdicts: dict[str, SettingVerdict] = {}
    for setting in settings:
        some = next((r for r in runs if r.setting == setting), None)
        if some is None:
            out += [f"**{SETTING_TITLES[setting]}**: not run yet (0 of {sum(planned[setting].values())} runs).", ""]
            verdicts[setting] = SettingVerdict("not run", [], [], [])
            continue
        out += [f"**{SETTING_TITLES[setting]}**, {len(some.trained)} rounds (primary test set: "
                f"{PRIMARY_TEST_SET[setting]}; colored {dataset})", ""]
        lines, verdicts[setting] = when_setting(runs, setting, planned[setting])
        notes = caveats(runs, setting, list(planned[setting]), "when", colour_only_accuracy(setting, config))
        notes += [note] if (note := rise_note(runs, setting, list(planned[setting]), "when")) else []
        out += [*lines, "", *(f"- {note}" for note in notes), *([""] if notes else [])]
    probes = load_probes(folders)
    if probe_lines := probe_table(runs, probes):
        out += [f"**What the 10-class models learn** (colored {dataset}; `fedgma probe`): each probed run's "
                "final model on its central test images, each painted in the training colours of another class. "
                "*Follows shape*: it answers the image's class; *follows colour*: the class whose colours the "
                f"image wears. {probe_coverage(runs, probes)}.", "", *probe_lines, ""]
    present = tuple(s for s in settings if any(r.setting == s for r in runs))
    plot_settings(runs, WHEN_LABELS, figures_dir / "when.png",
                  f"Primary test set accuracy per round, colored {dataset} (mean over seeds, min-max shaded; "
                  "dashed: no-mask controls)", study="when", settings=present)
    link = Path(os.path.relpath(figures_dir / "when.png", relative_to)).as_posix()
    out += [f"![Primary test set accuracy per round, the when grid]({link})", "",
            "**When does the mask help?** (generated from the tables above: the labels of each FedGMA arm "
            "against its no-mask control, random mask and uniform step)", ""]
    reused = sum(r.name in FULL_GRID_RUNS for r in runs)
    controls = sum(r.strategy in (*RANDOM_CONTROLS.values(), *STEP_CONTROLS.values()) for r in runs)
    steps = sorted({r.client_lr for r in runs if r.client_lr is not None})
    client_steps = (f"every run at client step {steps[0]:g}" if len(steps) == 1 else
                    f"client steps {', '.join(f'{v:g}' for v in steps)}" if steps else "client step not recorded")
    reused_said = f", {reused} of them the full grid's, reused" if reused else ""
    planned_said = (f"the first {len(runs)} of the {len(runs) + cut} runs it planned, the other {cut} cut to fit "
                    "its budget" if cut and len(runs) == len(manifest["runs"]) else
                    f"{len(runs)} of {len(manifest['runs'])} runs{cut_said}")
    summary = [f"**When does the mask help?** From the `when` grid on colored {dataset} ({planned_said}"
               f"{reused_said}; {controls} of them random-mask "
               f"or uniform-step runs; {client_steps}, where the full grid's client-step study uses the "
               f"paper's {PAPER_CLIENT_LR:g}; FedGMA against its no-mask, random-mask and uniform-step "
               f"controls, last-{LAST_ROUNDS}-round accuracy on each setting's primary test set (`plain` for "
               "the designed-for settings: images no client saw, the colour neutral, half red and half green, "
               "or no marker; `ood` for binary non-IID and 10-class), Holm per "
               "setting; tables, the secondary test sets and the runs cut to fit the grid's budget, in "
               "[docs/experiments.md](docs/experiments.md)). What the masks kept: the share of coordinates "
               f"that ws (eta_s=1) and gma keep over the last {LAST_ROUNDS} rounds (in parentheses: of the first "
               "layer's weights on the shortcut's input channels; blue carries only the markers, red and green "
               "the colour and the garment), and each arm against its random mask, which keeps each round as "
               "many coordinates per array as the agreement mask of its own run would (a run of its own, "
               "whose model, and so whose agreement, differs: its share is given beside). *Does nothing*: "
               "every comparison's interval lies within the margin given, so no effect that large, either way:",
               ""]
    for setting, verdict in verdicts.items():
        word = verdict.wording()
        made, planned_here = sum(r.setting == setting for r in runs), sum(planned[setting].values())
        progress = f" [{made} of {planned_here} runs]"
        out.append(f"- **{SETTING_TITLES[setting]}**: {word}{progress}" + (f" ({'; '.join(verdict.reasons)})"
                                                                           if verdict.reasons else ""))
        summary.append(f"- **{SETTING_TITLES[setting]}**: {word}{progress}" + (
            f" ({'; '.join(verdict.shown())})" if verdict.shown() else "") + (
            f". {'; '.join(verdict.why)}" if verdict.why else ""))
    answer = in_short(verdicts) + cut_by_budget(manifest)
    return "\n".join([*out, "", answer]) + "\n", "\n".join([*summary, "", answer]) + "\n"


# How the one-sentence answer says each verdict, in its order.
IN_SHORT = {HELPS: "helps in", HURTS: "hurts in", "mixed": "helps in one comparison and hurts in another in",
            "does nothing": "does nothing in", INCONCLUSIVE: "is undecided (inconclusive) in",
            TOO_FEW: "has too few seeds to judge in", NO_CONTROL_YET: "has no control finished yet in",
            NOT_MEASURABLE: "is not measurable in", "not run": "has not run in"}


def in_short(verdicts: dict[str, SettingVerdict]) -> str:
    """The plain answer in one sentence: the settings grouped by their verdict on the mask."""
    groups: dict[str, list[str]] = defaultdict(list)
    for setting, verdict in verdicts.items():
        groups[verdict.word].append(SETTING_TITLES[setting])
    measured = len(verdicts) - len(groups.get("not run", []))
    said = {word: f"{IN_SHORT[word]} {len(groups[word])} ({'; '.join(groups[word])})" if groups.get(word)
            else f"{IN_SHORT[word]} none" for word in IN_SHORT}
    others = [said[word] for word in IN_SHORT if word not in (HELPS, HURTS) and groups.get(word)]
    rest = f" It {', '.join(others[:-1])}{' and ' if len(others) > 1 else ''}{others[-1]}." if others else ""
    settings = f"{measured} setting{'' if measured == 1 else 's'}"
    return (f"**In short:** of the when grid's {settings} with finished runs, the mask {said[HELPS]} and "
            f"{said[HURTS]}.{rest}")


def cut_by_budget(manifest: dict[str, Any]) -> str:
    """What the grid planned and cut to fit its budget (its manifest's ``cut``), by setting; "" if nothing."""
    cut: dict[str, int] = defaultdict(int)
    for run in manifest.get("cut", []):
        cut[run["setting"]] += 1
    if not cut:
        return ""
    kept = {run["setting"] for run in manifest["runs"]}
    whole = [f"{SETTING_TITLES[s]} ({n} runs)" for s, n in cut.items() if s not in kept]
    part = [f"{SETTING_TITLES[s]} ({n} runs)" for s, n in cut.items() if s in kept]
    said = ([f"every run of {'; '.join(whole)}"] if whole else []) + (
        [f"some seeds or arms of {'; '.join(part)}"] if part else [])
    return (f" Cut before they ran, to fit the grid's budget of machine time ({sum(cut.values())} runs): "
            f"{', and '.join(said)}.")


def _kind(run: Run, scale_clients: int) -> str:
    settings = ALL_SETTINGS[run.setting]
    clients = settings.get("clients", scale_clients)  # as grids._run sizes the federation
    assert isinstance(clients, int)
    return kind_of(str(settings["task"]), clients)


def run_time(folders: dict[str, RunFolder], runs: list[Run], scale_clients: int) -> str:
    """The finished runs' seconds per round by kind (:mod:`.pace`, as ``grid status`` plans from)
    and, of the runs this grid made (not those reused from the full grid), the grid's wall time
    and the sum of their own clocks; ``folders``: :func:`~.results.grid_run_folders`,
    ``scale_clients``: the grid's federation size where a setting does not set its own."""
    clocks = {run.name: RunClock.of(folders[run.name], _kind(run, scale_clients))
              for run in runs if folders[run.name].is_finished()}
    every = pace(list(clocks.values()))
    made_here = pace([clock for name, clock in clocks.items() if name not in FULL_GRID_RUNS])
    if every is None:
        return "Run time: not recorded."
    per_round = f"per round: {every.describe()}."
    if made_here is None:
        return f"Run time: every finished run was reused from the full grid; {per_round}"
    reused = sum(name in FULL_GRID_RUNS for name in clocks)
    bound = (f"; {made_here.unrecorded} runs made before the grid recorded how many ran at once count in full, "
             "so this is an upper bound" if made_here.unrecorded else "")
    left_out = "start-up between runs" + (f" and the {reused} runs reused from the full grid" if reused else "")
    return (f"Run time: the grid's wall time about {format_seconds(made_here.wall_seconds)} (h:mm:ss; a run made "
            f"with others at once counts its share of its clock{bound}; {left_out} not counted); these runs' "
            f"own clocks sum to {format_seconds(made_here.clock_seconds)}; {per_round}")


def when_not_run() -> tuple[str, str]:
    """The when grid's blocks before any of its runs has finished."""
    return (f"The `when` grid has not run yet (no finished run in `results/when`); `{WHEN_COMMAND}` fills this "
            "block from it.\n",
            "**When does the mask help?** Not measured yet: the `when` grid (opposite, majority-sign and private "
            "shortcuts, full and partial participation, with random-mask and uniform-step controls) has not "
            "run. Its tables will be in [docs/experiments.md](docs/experiments.md).\n")


def write_when_report(results_dir: Path, figures_dir: Path, readmes: list[Path],
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
            write_block(path, block, begin, end)
        print(f"report: when blocks of {path} replaced")
    return written
