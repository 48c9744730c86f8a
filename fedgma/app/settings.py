"""The run settings: each declared once, here, as a field of its group.

A field's name is its key in ``[tool.flwr.app.config]`` (hyphens for underscores,
unless ``key`` says otherwise); its metadata (:func:`setting`) holds the default, the
bounds and the one-line doc. From these declarations come the validation
(:func:`parse_run_config`, used by the ServerApp and the ClientApp on
``context.run_config``), the ``[tool.flwr.app.config]`` block of ``pyproject.toml``
(:func:`pyproject_block`) and the settings table of ``docs/settings.md``
(:func:`markdown_table`); a test checks that both files hold what these produce.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from fedgma.strategy.masking import MASK_CONTROLS, VARIANTS

from .strategies import STRATEGIES
from .task import TASKS

if TYPE_CHECKING:
    from fedgma.strategy.validation import ReplyBounds

DATASETS = ("fashion-mnist", "mnist")
PARTITIONINGS = ("iid", "non-iid", "dirichlet")
SHORTCUTS = ("color", "marker")
MARKER_CELLS = 81  # the marker shortcut's 3x3 cells of the 27x27 top-left square: at most 81 clients

Kind = Literal["int", "float", "flag", "choice", "text", "path", "name", "tau"]


class ConfigError(ValueError):
    """A run setting with a bad value; the message names the key."""


@dataclass(frozen=True)
class Spec:
    """How one setting is checked and documented."""

    kind: Kind
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the low bound itself is refused
    high_open: bool = False  # the high bound itself is refused
    choices: tuple[str, ...] = ()
    key: str | None = None  # the key, where it is not the field's name
    result: bool = True  # changing it changes the rounds' result (a resume must keep it)


T = TypeVar("T")


def setting(kind: Kind, default: Any, doc: str, **spec: Any) -> Any:
    """A settings field: its :class:`Spec` as metadata (no dataclass default: every key is required)."""
    return field(metadata={"spec": Spec(kind, default, doc, **spec)})


@dataclass(frozen=True)
class Federation:
    """Rounds, sampling, deadlines and the bounds each training reply must respect."""

    num_server_rounds: int = setting("int", 5, "rounds of training", low=1, result=False)
    fraction_train: float = setting("float", 1.0, "fraction of connected nodes sampled for training",
                                    low=0.0, high=1.0, low_open=True)
    fraction_evaluate: float = setting("float", 0.0, "fraction sampled for client-side evaluation (the server "
                                       "always evaluates centrally)", low=0.0, high=1.0)
    min_nodes: int = setting("int", 2, "min train / evaluate / available nodes", low=1)
    round_timeout: float = setting("float", 300.0, "seconds to wait for one round's replies (measured honest "
                                   "waits: under 30 s; docs/hostile-clients.md)", low=0.0, low_open=True,
                                   result=False)
    skip_timed_out_rounds: int = setting("int", 2, "a node that timed out is not sampled for this many rounds; "
                                         "0 = sampled as usual", low=0, result=False)
    reply_poll_interval: float = setting("float", 0.2, "seconds between the server's pulls for replies; 0 = "
                                         "Flower's Grid.send_and_receive (3 s deployed)", low=0.0, high=60.0,
                                         result=False)
    min_train_replies: int = setting("int", 1, "fewer usable replies keep the global model for that round", low=0)
    max_failed_rounds: int = setting("int", 3, "this many rounds in a row without a model update end the run as "
                                     "failed; 0 = never", low=0, result=False)
    max_num_examples: int = setting("int", 100_000_000, "a reply claiming more examples counts as this many",
                                    low=1)
    max_weight_ratio: float = setting("float", 10.0, "a reply claiming more than this times the round's lower "
                                      "median examples counts as that; 0 = off, else >= 1", low=0.0)
    max_update_norm: float = setting("float", 0.0, "a reply whose update (x - y) has a larger L2 norm is scaled "
                                     "down to it; 0 = off", low=0.0)
    max_norm_ratio: float = setting("float", 5.0, "a reply whose update is longer than this times the round's "
                                    "lower median is scaled down to it; 0 = off, else >= 1", low=0.0)
    num_partitions: int = setting("int", 0, "partitions in the federation: replies must hold partition-id < it; "
                                  "0 = the one most nodes declare", low=0)

    @property
    def poll_interval(self) -> float | None:
        """Seconds between the round loop's pulls; None (a setting of 0) leaves the wait to
        the grid's own ``send_and_receive`` (Flower 1.39 deployed: every 3 s)."""
        return self.reply_poll_interval or None

    @property
    def failed_rounds_bound(self) -> int | None:
        """``max-failed-rounds`` as the round loop takes it: None when 0 (never fail for it)."""
        return self.max_failed_rounds or None

    @property
    def partitions_bound(self) -> int | None:
        """``num-partitions``, None when 0 (the run's value is the one most nodes declare)."""
        return self.num_partitions or None

    @property
    def reply_bounds(self) -> ReplyBounds:
        """The bounds on every training reply, as the loop and FedGMA take them; 0 is no bound."""
        from fedgma.strategy.validation import ReplyBounds  # the ClientApp never needs it

        return ReplyBounds(max_num_examples=self.max_num_examples, max_update_norm=self.max_update_norm or None,
                           max_weight_ratio=self.max_weight_ratio or None, max_norm_ratio=self.max_norm_ratio or None)


@dataclass(frozen=True)
class StrategySettings:
    """Which strategy aggregates, and its parameters."""

    name: str = setting("choice", "fedgma", "the aggregation strategy", choices=tuple(STRATEGIES), key="strategy")
    variant: str = setting("choice", "ws", "FedGMA: ws (workshop paper) | gma (journal version); fedgma-adam: "
                           "always gma", choices=VARIANTS)
    tau: float | None = setting("tau", "auto", "agreement threshold in [0, 1]; auto = 0.8 for ws, 0.4 for gma")
    server_lr: float = setting("float", 1.0, "FedGMA eta_s; FedAvgM server learning rate", low=0.0)
    agreement_weighted: bool = setting("flag", False, "weight sign agreement by num-examples")
    mask_control: str = setting("choice", "none", "FedGMA research controls: none | random (the mask's kept count "
                                "per array at random places, seeded by seed) | uniform (every coordinate of the "
                                "model's float arrays gets the round's model-wide mean mask)", choices=MASK_CONTROLS)
    server_momentum: float = setting("float", 0.9, "fedavgm", low=0.0, high=1.0)
    proximal_mu: float = setting("float", 0.01, "fedprox", low=0.0)
    adam_eta: float = setting("float", 0.01, "fedadam server learning rate", low=0.0, low_open=True)
    adam_beta_1: float = setting("float", 0.9, "fedadam", low=0.0, high=1.0)
    adam_beta_2: float = setting("float", 0.99, "fedadam", low=0.0, high=1.0)
    adam_tau: float = setting("float", 0.001, "FedAdam's adaptivity constant (not FedGMA's tau)", low=0.0,
                              low_open=True)


@dataclass(frozen=True)
class TaskSettings:
    """The task, its data and how the data is split; everything a task module reads."""

    name: str = setting("choice", "binary", "the task (fedgma/app/task/): binary (IRM-style) | ten-class",
                        choices=tuple(TASKS), key="task")
    dataset: str = setting("choice", "fashion-mnist", "base images; where they live is each host's own setting",
                           choices=DATASETS)
    partitioning: str = setting("choice", "non-iid", "iid | non-iid (two classes per client) | dirichlet",
                                choices=PARTITIONINGS)
    dirichlet_alpha: float = setting("float", 0.5, "dirichlet concentration", low=0.0, low_open=True)
    train_images: int = setting("int", 0, "images drawn from the base training set (0 = all)", low=0)
    test_images: int = setting("int", 0, "images of each central test set (0 = all)", low=0)
    color_flip_min: float = setting("float", 0.1, "binary task: per-client colour flip probability range",
                                    low=0.0, high=1.0)
    color_flip_max: float = setting("float", 0.2, "binary task: upper end of that range", low=0.0, high=1.0)
    ood_color_flip: float = setting("float", 0.9, "binary task: flip probability of the OOD test set (colour "
                                    "or marker)", low=0.0, high=1.0)
    label_noise: float = setting("float", 0.0, "binary task: probability of flipping the training label",
                                 low=0.0, high=1.0)
    shortcut: str = setting("choice", "color", "binary task: what carries the label shortcut: color (the digit's "
                            "colour) | marker (a 3x3 blue patch at a position private to each client)",
                            choices=SHORTCUTS)
    shortcut_reversed_share: float = setting("float", 0.0, "binary task: share of clients whose shortcut-label "
                                             "relation is reversed, spread evenly (0.5: every other client)",
                                             low=0.0, high=1.0, high_open=True)
    marker_clients: int = setting("int", 0, "marker shortcut: the ID and OOD test sets carry the markers of "
                                  f"clients 0..K-1 (set it to the federation's size); 0 = all {MARKER_CELLS}",
                                  low=0, high=MARKER_CELLS)
    color_class_correlation: float = setting("float", 1.0, "ten-class task: probability that a training or ID "
                                             "image takes its own class's colours, else another class's",
                                             low=0.0, high=1.0, low_open=True)
    seed: int = setting("int", 0, "data, initial model and node sampling", low=0)


@dataclass(frozen=True)
class Training:
    """Local training on each client."""

    local_epochs: int = setting("int", 3, "epochs per round", low=1)
    client_lr: float = setting("float", 0.01, "client SGD learning rate", low=0.0, low_open=True)
    batch_size: int = setting("int", 32, "client batch size", low=1)


@dataclass(frozen=True)
class Outputs:
    """Where the server writes the run (below its operator's output root)."""

    output_dir: str = setting("path", "", "a folder below the server's output root ($FEDGMA_OUTPUT_ROOT, else "
                              "./outputs)", result=False)
    run_name: str = setting("name", "", "empty: <strategy>-<timestamp>-run<id>", result=False)
    resume: str = setting("path", "", "run folder below output-dir to continue from its last checkpoint "
                          '("" = new run)', result=False)


GROUPS: dict[str, type] = {
    "federation": Federation, "strategy": StrategySettings, "task": TaskSettings, "training": Training,
    "outputs": Outputs,
}


@dataclass(frozen=True)
class RunConfig:
    """The validated run settings, by group."""

    federation: Federation
    strategy: StrategySettings
    task: TaskSettings
    training: Training
    outputs: Outputs

    def flat(self) -> dict[str, Any]:
        """Every setting by field name (``strategy`` and ``task`` for the two ``name`` fields),
        as a run's ``config.json`` keeps them."""
        return {_key(f).replace("-", "_"): getattr(getattr(self, group), f.name)
                for group, f in _all_fields()}

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> RunConfig:
        """The settings a run's ``config.json`` keeps (:meth:`flat`, facts such as the run id
        ignored; settings it lacks take their defaults), validated again."""
        raw = defaults()
        for key in raw:
            name = key.replace("-", "_")
            if name in flat:
                raw[key] = "auto" if key == "tau" and flat[name] is None else flat[name]
        return parse_run_config(raw)

    def result_settings(self) -> dict[str, Any]:
        """The settings whose change would change the run's result, by key (a checkpoint
        keeps them, and a resumed run must have the same)."""
        return {_key(f): getattr(getattr(self, group), f.name) for group, f in _all_fields() if _spec(f).result}


def _spec(f: Any) -> Spec:
    return cast(Spec, f.metadata["spec"])


def _key(f: Any) -> str:
    return _spec(f).key or f.name.replace("_", "-")


def _all_fields() -> Iterator[tuple[str, Any]]:
    for group, cls in GROUPS.items():
        for f in fields(cls):
            yield group, f


def specs() -> dict[str, tuple[str, Spec]]:
    """Every setting's key -> (group, :class:`Spec`), in declaration order."""
    return {_key(f): (group, _spec(f)) for group, f in _all_fields()}


def not_result_settings() -> frozenset[str]:
    """The keys of the settings a run may resume with changed (they do not change its rounds)."""
    return frozenset(key for key, (_, spec) in specs().items() if not spec.result)


def defaults() -> dict[str, Any]:
    """Every key with its default, as ``[tool.flwr.app.config]`` holds it."""
    return {key: spec.default for key, (_, spec) in specs().items()}


# ---------------------------------------------------------------- checking one value

def _number(key: str, raw: Any, spec: Spec, where: str) -> int | float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ConfigError(f"{where}: {key!r} must be a number, got {raw!r}")
    value: int | float
    if spec.kind == "int":
        if float(raw) != int(raw):
            raise ConfigError(f"{where}: {key!r} must be a whole number, got {raw!r}")
        value = int(raw)
    else:
        value = float(raw)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: {key!r} must be finite, got {value!r}")
    low, high = spec.low, spec.high
    if low is not None and (value <= low if spec.low_open else value < low):
        bound = f"> {low}" if spec.low_open else f">= {low}"
        raise ConfigError(f"{where}: {key!r} must be {bound}, got {value!r}")
    if high is not None and (value >= high if spec.high_open else value > high):
        bound = f"< {high}" if spec.high_open else f"<= {high}"
        raise ConfigError(f"{where}: {key!r} must be {bound}, got {value!r}")
    return value


def check_number(raw: dict[str, Any], key: str, kind: type, low: float | None = None, high: float | None = None,
                 where: str = "run config") -> Any:
    """A required whole or real number of ``raw`` within ``[low, high]`` (also for node settings)."""
    if key not in raw:
        raise ConfigError(f"{where}: missing key {key!r}")
    value: int | float = _number(key, raw[key], Spec("int" if kind is int else "float", None, "", low=low, high=high),
                                 where)
    return value


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"run config: {key!r} must be a string, got {value!r}")
    return value


def _value(key: str, value: Any, spec: Spec) -> Any:
    if spec.kind in ("int", "float"):
        return _number(key, value, spec, "run config")
    if spec.kind == "flag":
        if not isinstance(value, bool):
            raise ConfigError(f"run config: {key!r} must be true or false, got {value!r}")
        return value
    if spec.kind == "choice":
        if value not in spec.choices:
            raise ConfigError(f"run config: {key!r} must be one of {', '.join(spec.choices)}; got {value!r}")
        return value
    if spec.kind == "tau":
        if value == "auto":
            return None
        try:
            return _number(key, value, Spec("float", None, "", low=0.0, high=1.0), "run config")
        except ConfigError as err:
            raise ConfigError(f'{err} (or "auto")') from None
    text = _text(key, value)
    if spec.kind == "path":
        # A path that stays below the folder it is relative to: no absolute path, ``~`` or ``..``.
        path = PurePosixPath(text)
        if path.is_absolute() or text.startswith("~") or ".." in path.parts or "\\" in text:
            raise ConfigError(f"run config: {key!r} must be a relative path below the server's output root "
                              f"(no absolute path, '~' or '..'), got {text!r}")
    elif spec.kind == "name" and ("/" in text or "\\" in text or text in (".", "..")):
        raise ConfigError(f"run config: {key!r} must be a plain name, got {text!r}")
    return text


def _group(cls: Callable[..., T], raw: dict[str, Any]) -> T:
    values = {}
    for f in fields(cast(Any, cls)):
        key = _key(f)
        if key not in raw:
            raise ConfigError(f"run config: missing key {key!r}")
        values[f.name] = _value(key, raw[key], _spec(f))
    return cls(**values)


def _near_misses(unknown: list[str]) -> str:
    """"; did you mean ..." for unknown keys that are close to known ones (``server_lr``: ``server-lr``)."""
    known = list(specs())
    # FedGMA's own argument for the threshold (mask_tau) is `tau` here; difflib would offer adam-tau.
    library = {"mask-tau": "tau"}
    guesses = {key: library.get(name) or match[0] for key in unknown
               if (name := key.replace("_", "-")) in library
               or (match := difflib.get_close_matches(name, known, n=1, cutoff=0.6))}
    return "; did you mean " + ", ".join(f"{g!r} for {k!r}" for k, g in guesses.items()) if guesses else ""


def parse_run_config(raw: dict[str, Any]) -> RunConfig:
    """Validate ``context.run_config`` and return it as a :class:`RunConfig`.

    Raises
    ------
    ConfigError
        Naming the first key that is missing, unknown or out of range.
    """
    unknown = sorted(set(raw) - set(specs()))
    if unknown:
        raise ConfigError(f"run config: unknown key(s) {unknown}{_near_misses(unknown)}")
    config = RunConfig(**{name: _group(cls, raw) for name, cls in GROUPS.items()})
    task = config.task
    if task.color_flip_min > task.color_flip_max:
        raise ConfigError("run config: 'color-flip-min' must be <= 'color-flip-max', got "
                          f"{task.color_flip_min} > {task.color_flip_max}")
    partitions = config.federation.num_partitions
    if task.name == "binary" and task.shortcut == "marker" and partitions > MARKER_CELLS:
        raise ConfigError(f"run config: 'shortcut' = marker gives each client one of {MARKER_CELLS} marker "
                          f"positions, so at most {MARKER_CELLS} clients; got 'num-partitions' = {partitions}")
    # A setting that the chosen strategy or task never reads would be recorded in config.json as if
    # it had been applied (e.g. a FedAvg run labelled with a random mask): refused unless at its default.
    mask_strategies = ("fedgma", "fedgma-adam")
    if config.strategy.mask_control != "none" and config.strategy.name not in mask_strategies:
        raise ConfigError(f"run config: 'mask-control' applies to {' and '.join(mask_strategies)} only, "
                          f"not to 'strategy' = {config.strategy.name}")
    binary_only = {"shortcut": (task.shortcut, "color"), "shortcut-reversed-share": (task.shortcut_reversed_share, 0.0),
                   "marker-clients": (task.marker_clients, 0)}
    ten_class_only = {"color-class-correlation": (task.color_class_correlation, 1.0)}
    for key, (value, default) in (binary_only if task.name != "binary" else ten_class_only).items():
        if value != default:
            raise ConfigError(f"run config: {key!r} does not apply to 'task' = {task.name}; leave it at {default!r}")
    for key in ("max-weight-ratio", "max-norm-ratio"):
        ratio = raw[key]
        if 0 < ratio < 1:
            raise ConfigError(f"run config: {key!r} must be 0 (no bound) or >= 1, got {float(ratio)}")
    return config


# ---------------------------------------------------------------- the files made from the table

def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, int) and value >= 10_000:
        return f"{value:_}".replace("_", "")
    return repr(value)


def _doc(spec: Spec) -> str:
    """The doc, led by the choices where it does not name them all."""
    if spec.kind == "choice" and not all(choice in spec.doc for choice in spec.choices):
        return f"{' | '.join(spec.choices)}: {spec.doc}"
    return spec.doc


def pyproject_block() -> str:
    """The body of ``[tool.flwr.app.config]``: every key, its default and its doc, by group."""
    lines = ["# Generated from fedgma/app/settings.py (fedgma settings); edit the values freely."]
    for group, cls in GROUPS.items():
        lines.append(f"# --- {group} " + "-" * (74 - len(group)))
        for f in fields(cast(Any, cls)):
            spec = _spec(f)
            entry = f"{_key(f)} = {_toml(spec.default)}"
            lines.append(f"{entry:<32} # {_doc(spec)}")
    return "\n".join(lines) + "\n"


def _bounds(spec: Spec) -> str:
    if spec.kind == "choice":
        return " \\| ".join(spec.choices)
    if spec.kind == "flag":
        return "true \\| false"
    if spec.kind == "tau":
        return "[0, 1] or auto"
    if spec.kind in ("path", "name"):
        return "relative path" if spec.kind == "path" else "plain name"
    low = "" if spec.low is None else (f"> {spec.low:g}" if spec.low_open else f">= {spec.low:g}")
    high = "" if spec.high is None else (f"< {spec.high:g}" if spec.high_open else f"<= {spec.high:g}")
    return ", ".join(p for p in (low, high) if p) or "any"


def markdown_table() -> str:
    """The settings table of ``docs/settings.md``."""
    lines = ["| key | group | default | values | what it does | changes the result |", "|---|---|---|---|---|---|"]
    for key, (group, spec) in specs().items():
        doc = spec.doc.replace("|", "\\|")
        lines.append(f"| `{key}` | {group} | `{_toml(spec.default)}` | {spec.kind}: {_bounds(spec)} | {doc} | "
                     f"{'yes' if spec.result else 'no'} |")
    return "\n".join(lines) + "\n"
