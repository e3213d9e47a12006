"""Search-space YAML -> validated `SearchSpace`. Strict: every mistake is a one-line `SpaceError`.

```yaml
name: quickstart                 # experiment name prefix
metric: val_acc                  # val_acc (max) | val_loss (min) | train_loss (min)
mode: max                        # must match the metric's direction
num_samples: 16                  # trials, the recommended-defaults trial included
seed: 0                          # seeds Optuna's TPE sampler
scheduler: {max_epochs: 20, grace_period: 2, reduction_factor: 3}   # ASHA, in epochs
resources: {cpu: 1, gpu: auto}   # per trial; gpu: a number (fractions share a GPU) or auto (the
                                 # default): none without a GPU, else trials packed per GPU (packing.py)
max_concurrent: 2                # optional cap on trials at once (default: what resources allow)
retries: 1                       # re-runs of a crashed trial from its last checkpoint
checkpoint_every_s: 10           # a trial's checkpoint goes to storage at most this often (0: every
                                 # epoch) and always at its last epoch; a resumed trial restarts there
fixed: {model: vit_micro, ...}   # TrainConfig values held constant
search:                          # TrainConfig values Optuna samples
  lr:            {loguniform: [1.0e-4, 3.0e-2]}
  warmup_epochs: {int: [0, 5]}
  weight_decay:  {loguniform: [0.01, 0.3]}
  aug_strength:  {uniform: [0.0, 1.0]}
  batch_size:    {choice: [32, 64, 128, 512]}
```
Distributions: `loguniform`, `uniform`, `int`, `int-log` take `[low, high]` with low < high;
`choice` takes a non-empty list of distinct values. A key is fixed or searched, never both; keys
that shape the loaded data (`data`, `data_subset`, `val_fraction`, `image_size`, `seed`) and
`epochs` (it is `scheduler.max_epochs`) cannot be searched, because data is loaded once per search;
`monitors`, `compile`, `loader`, `loader_workers` and `micro_batch_size` change how a trial runs, not
what it learns.
TrainConfig's recommended defaults are always evaluated first, as the recommended-defaults trial,
even where a default lies outside the searched range (it is then not an Optuna parameter of that
trial, but a user attribute `outside_space.<key>`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .config import DATA_KEYS, TrainConfig, model_depth, read_yaml, width_and_heads
from .errors import ConfigError, SpaceError
from .files import MAX_NAME

# metric -> (direction, worst value: what a diverged or failed trial scores)
METRICS = {"val_acc": ("max", 0.0), "val_loss": ("min", math.inf), "train_loss": ("min", math.inf)}
DISTRIBUTIONS = ("loguniform", "uniform", "int", "int-log", "choice")
TOP_KEYS = {"name", "metric", "mode", "num_samples", "seed", "scheduler", "resources", "max_concurrent", "retries",
            "checkpoint_every_s", "fixed", "search"}
SCHEDULER_KEYS = {"max_epochs", "grace_period", "reduction_factor"}
RESOURCE_KEYS = {"cpu", "gpu"}
# The shipped spaces live in the package, so that an installed (not editable) vitsearch finds them by name too;
# the repository's search_spaces/ is a link to this folder.
SPACES_DIR = Path(__file__).resolve().parent / "search_spaces"


@dataclass(frozen=True)
class Distribution:
    kind: str
    low: Any = None
    high: Any = None
    choices: tuple = ()

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        if value is None:  # an unset default (e.g. distill_weight: None, the mode's own) is no number
            return False
        if self.kind in ("int", "int-log") and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        return f"choice {list(self.choices)}" if self.kind == "choice" else f"{self.kind} [{self.low}, {self.high}]"

    def to_optuna(self):
        import optuna.distributions as od

        if self.kind == "choice":
            return od.CategoricalDistribution(list(self.choices))
        if self.kind in ("int", "int-log"):
            return od.IntDistribution(self.low, self.high, log=self.kind == "int-log")
        return od.FloatDistribution(self.low, self.high, log=self.kind == "loguniform")


@dataclass(frozen=True)
class SearchSpace:
    name: str
    metric: str
    mode: str
    num_samples: int
    seed: int
    max_epochs: int
    grace_period: int
    reduction_factor: int
    cpu: float
    gpu: float
    max_concurrent: int | None
    retries: int
    checkpoint_every_s: float
    fixed: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Distribution] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # the YAML as loaded, for the experiment folder
    gpu_auto: bool = False  # resources.gpu was auto: on a GPU machine the search probes the packing

    @property
    def rungs(self) -> list[int]:
        """ASHA's milestones in epochs: grace_period x reduction_factor^k below max_epochs."""
        rungs, rung = [], self.grace_period
        while rung < self.max_epochs:
            rungs.append(rung)
            rung *= self.reduction_factor
        return rungs

    @property
    def worst(self) -> float:
        return METRICS[self.metric][1]

    def base_config(self) -> dict[str, Any]:
        """Fixed values plus the budget: what every trial's TrainConfig starts from."""
        return {**self.fixed, "epochs": self.max_epochs}

    def defaults_point(self) -> dict[str, Any]:
        """TrainConfig's recommended value for every searched key: the first trial."""
        defaults = TrainConfig()
        point = {}
        for key, dist in self.search.items():
            value = getattr(defaults, key)
            # None (e.g. depth: the model family's own) stays None: the trial runs TrainConfig's behaviour.
            is_int = dist.kind in ("int", "int-log") and value is not None and float(value).is_integer()
            point[key] = int(value) if is_int else value
        return point

    def trial_config(self, sampled: dict[str, Any]) -> TrainConfig:
        return TrainConfig.from_dict({**self.base_config(), **sampled})

    def fit_to_data(self, train_images: int, data_name: str, origin: str = "space") -> tuple[SearchSpace, str | None]:
        """The space without the batch sizes that `data` cannot fill (a batch is at most its training
        images), and a line saying what was left out; a fixed or searched batch size that leaves
        nothing is a SpaceError. A trial with a larger batch would fail at once, wasting its sample."""
        n, where = train_images, f"the {train_images} training images of {data_name!r}"
        if self.fixed.get("batch_size", 0) > n:
            raise SpaceError(f"{origin}: fixed.batch_size is {self.fixed['batch_size']}, more than {where}")
        dist, default = self.search.get("batch_size"), TrainConfig().batch_size
        if dist is None:  # every trial trains at the fixed batch or TrainConfig's
            if "batch_size" not in self.fixed and default > n:  # every trial would fail (it was only a note)
                raise SpaceError(f"{origin}: batch_size is TrainConfig's {default} in every trial (the space neither "
                                 f"fixes nor searches it), more than {where}; fix it (fixed: batch_size: N) or "
                                 "search it")
            return self, None
        if dist.kind == "choice":
            kept = tuple(c for c in dist.choices if c <= n)
            if not kept:
                raise SpaceError(f"{origin}: search.batch_size: every choice of {list(dist.choices)} is more "
                                 f"than {where}")
            left_out = [c for c in dist.choices if c > n]
            fitted = replace(dist, choices=kept)
        else:
            if dist.low > n:
                raise SpaceError(f"{origin}: search.batch_size: its low {dist.low} is more than {where}")
            left_out = [f"{n + 1}-{dist.high}"] if dist.high > n else []
            fitted = replace(dist, high=min(dist.high, n))
        if not left_out:
            return self, (f"the recommended defaults' batch_size {default} is more than {where}: that trial will "
                          "fail" if default > n else None)
        note = (f"batch_size {', '.join(map(str, left_out))} left out of the search: more than {where}"
                + (f" (the recommended defaults' batch {default} too: that trial will fail)" if default > n else ""))
        return replace(self, search={**self.search, "batch_size": fitted}), note

    def with_data(self, data: str) -> SearchSpace:
        """The same space on another dataset spec (the CLI's --data)."""
        source = {**self.source, "fixed": {**self.source.get("fixed", {}), "data": data}}
        return parse_space(source, origin=f"{self.name} with --data {data}")


def resolve_space_path(name: str) -> Path:
    """`--space` takes a path, or a name found in search_spaces/ (with or without .yaml), or a path without its
    .yaml or .yml."""
    path = Path(name)
    if path.is_file():
        return path
    # a shipped space by name first; then `--space my_space` for ./my_space.yaml or .yml (it was "not found")
    for candidate in (SPACES_DIR / name, SPACES_DIR / f"{name}.yaml", Path(f"{name}.yaml"), Path(f"{name}.yml")):
        if candidate.is_file():
            return candidate
    available = ", ".join(sorted(p.name for p in SPACES_DIR.glob("*.yaml")))
    raise SpaceError(f"search space {name!r} not found (not a file, nor in search_spaces/: {available})")


def load_space(name: str) -> SearchSpace:
    path = resolve_space_path(name)
    try:
        raw = read_yaml(path, "search space")
    except ConfigError as exc:
        raise SpaceError(str(exc)) from None
    return parse_space(raw, origin=str(path))


def parse_space(raw: Any, origin: str = "space", new: bool = True) -> SearchSpace:
    """A search space from its parsed YAML. `new`: also refuse what would waste the trials (values no trial
    can build or that change nothing); an existing experiment's space (`experiment_space`) is read without
    those checks, so that one made before a check was added is still reported, resumed and extended."""
    def fail(message: str):
        raise SpaceError(f"{origin}: {message}")

    if not isinstance(raw, dict):
        fail("must be a mapping with keys " + ", ".join(sorted(TOP_KEYS)))
    for key in raw:
        if key not in TOP_KEYS:
            if key in TrainConfig.field_names() and not {"search", "fixed"} & set(raw):
                fail(f"unknown key {key!r}: this is a TrainConfig file (for `train --config`), not a search space, "
                     "whose TrainConfig values go under fixed: and its searched ones under search:")
            fail(f"unknown key {key!r}; valid keys: {', '.join(sorted(TOP_KEYS))}")
    metric = raw.get("metric", "val_acc")
    if metric not in METRICS:
        fail(f"unknown metric {metric!r}; the trainer reports {', '.join(METRICS)}")
    mode = raw.get("mode", METRICS[metric][0])
    if mode != METRICS[metric][0]:
        fail(f"mode {mode!r} does not fit metric {metric!r} (must be {METRICS[metric][0]!r})")

    def integer(section: dict, key: str, default: Any, minimum: int, where: str = "") -> Any:
        value = section.get(key, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            fail(f"{where}{key} is {value!r}, but must be an integer >= {minimum}")
        return value

    num_samples = integer(raw, "num_samples", 16, 1)
    seed = integer(raw, "seed", 0, 0)
    retries = integer(raw, "retries", 1, 0)
    max_concurrent = integer(raw, "max_concurrent", None, 1)
    checkpoint_every_s = raw.get("checkpoint_every_s", 10)
    if isinstance(checkpoint_every_s, bool) or not isinstance(checkpoint_every_s, (int, float)) \
            or checkpoint_every_s < 0:
        fail(f"checkpoint_every_s is {checkpoint_every_s!r}, but must be a number of seconds >= 0")
    scheduler = _section(raw, "scheduler", SCHEDULER_KEYS, fail)
    max_epochs = integer(scheduler, "max_epochs", 20, 1, "scheduler.")
    grace = integer(scheduler, "grace_period", 1, 1, "scheduler.")
    factor = integer(scheduler, "reduction_factor", 3, 2, "scheduler.")
    if grace > max_epochs:
        fail(f"scheduler.grace_period is {grace}, but must be <= scheduler.max_epochs ({max_epochs})")
    resources = _section(raw, "resources", RESOURCE_KEYS, fail)
    cpu, gpu = resources.get("cpu", 1), resources.get("gpu", "auto")
    gpu_auto = gpu == "auto"
    if gpu_auto:
        gpu = _gpus_available()
    for key, value in (("cpu", cpu), ("gpu", gpu)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            fail(f"resources.{key} is {value!r}, but must be a number >= 0")
    if cpu == 0 and gpu == 0:
        fail("resources: a trial needs cpu > 0 or gpu > 0")

    fixed = _section(raw, "fixed", None, fail)
    search_raw = _section(raw, "search", None, fail)
    if not search_raw:
        fail("search: is empty; name at least one TrainConfig key to sample")
    valid = TrainConfig.field_names()
    if "epochs" in fixed:
        fail("fixed.epochs: the budget is scheduler.max_epochs; remove fixed.epochs")
    for key in fixed:
        if key not in valid:
            fail(f"fixed.{key} is not a TrainConfig key; valid keys: {', '.join(valid)}")
    search: dict[str, Distribution] = {}
    for key, spec in search_raw.items():
        if key in fixed:
            fail(f"{key!r} is both fixed and searched; keep it in one of fixed: or search:")
        if key not in valid:
            fail(f"search.{key} is not a TrainConfig key; valid keys: {', '.join(valid)}")
        if key in DATA_KEYS or key == "epochs":
            why = "the budget is scheduler.max_epochs" if key == "epochs" else "data is loaded once per search"
            fail(f"search.{key} cannot be searched: {why}")
        if new and key in NOT_KNOBS:
            fail(f"search.{key}: {NOT_KNOBS[key]}, not what a trial learns: every trial would learn the same "
                 "whatever is drawn; fix it instead")
        search[key] = _distribution(key, spec, fail)
        kind = next(f.type for f in fields(TrainConfig) if f.name == key)
        if new and kind.replace(" | None", "") == "int" and search[key].kind in ("uniform", "loguniform"):
            # Optuna then draws fractions (batch_size 45.3): every trial but the defaults failed as it started
            fail(f"search.{key}.{search[key].kind}: {key} takes whole numbers, so it would draw fractions; search it "
                 f"with int or int-log (or choice)")

    try:
        base = TrainConfig.from_dict({**fixed, "epochs": max_epochs})
    except ConfigError as exc:
        fail(f"fixed: {exc}")
    for key, dist in search.items():
        for bound in (dist.choices if dist.kind == "choice" else (dist.low, dist.high)):
            try:
                base.replace(**{key: bound})
            except ConfigError as exc:
                fail(f"search.{key}: {exc}")
    if new:
        _check_range_values(base, search, fail)
        _check_heads(base, fixed, search, fail)
        _check_effect(base, fixed, search, fail)
        _check_metric(metric, search, fail)
        warmup = search.get("warmup_epochs")
        if warmup is not None and (top := max(_highest(base, search, "warmup_epochs"))) > max_epochs:
            # the trainer cuts a warmup to the run: the rest trained alike
            fail(f"search.warmup_epochs: {warmup.describe()} reaches {top:g}, past the budget of {max_epochs} epochs "
                 f"(scheduler.max_epochs): a warmup longer than the run is cut to it, so every value from "
                 f"{max_epochs} on trains the same; search at most {max_epochs}")
        _check_freeze(base, search, fail)
        _check_drop_path(base, search, fail)
    name = raw.get("name", Path(origin).stem)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        fail(f"name {name!r} must be letters, digits, '-' and '_'")
    if len(name.encode()) > MAX_NAME:  # it names the experiment's folder, with the time added
        fail(f"name {name[:20]}... is {len(name.encode())} bytes long, but must be at most {MAX_NAME}")
    return SearchSpace(name, metric, mode, num_samples, seed, max_epochs, grace, factor, float(cpu), float(gpu),
                       max_concurrent, retries, float(checkpoint_every_s), dict(fixed), search, dict(raw), gpu_auto)


def listed(items: list, most: int) -> str:
    """The first `most` of `items`, with ", ..." where more follow (values a range draws, in one line)."""
    return ", ".join(map(str, items[:most])) + (", ..." if len(items) > most else "")


# keys that change how a trial runs, not what it learns: a search over them ranked noise
NOT_KNOBS = {"monitors": "it records attention maps and norms",
             "compile": "it changes how fast a trial trains (torch.compile)",
             "loader": "it changes how images reach the trainer",
             "loader_workers": "it changes how images reach the trainer",
             "micro_batch_size": "it splits each batch for memory (accumulation makes up the same batch_size)"}


def _check_range_values(base: TrainConfig, search: dict[str, Distribution], fail) -> None:
    """A whole-number range is checked value by value, as a choice is (its ends were checked above):
    `patch_size: {int: [2, 8]}` at 16 px failed each trial that drew 3, 5, 6 or 7. A searched min_lr must
    stay below the lowest searched lr: a trial that drew it above its lr failed."""
    for key, dist in search.items():
        if dist.kind not in ("int", "int-log") or dist.high - dist.low > 1000:
            continue
        values = range(int(dist.low), int(dist.high) + 1)
        refused: dict[int, str] = {}
        for value in values:
            try:
                base.replace(**{key: value})
            except ConfigError as exc:
                refused[value] = str(exc)
        if refused:
            good = [v for v in values if v not in refused]
            bad = list(refused)
            fail(f"search.{key}: {dist.describe()} draws {len(bad)} of {len(values)} values TrainConfig refuses "
                 f"({next(iter(refused.values()))}; also {listed(bad[1:], 5)}): every trial that drew one would "
                 f"fail; search a choice of the others (choice: [{listed(good, 8)}])"
                 if len(bad) > 1 else f"search.{key}: {dist.describe()} draws {bad[0]}, which TrainConfig refuses "
                 f"({refused[bad[0]]}): every trial that drew it would fail")
    if "min_lr" in search and "lr" in search:
        def ends(dist: Distribution) -> tuple:
            return (min(dist.choices), max(dist.choices)) if dist.kind == "choice" else (dist.low, dist.high)

        lowest_lr, highest_min = ends(search["lr"])[0], ends(search["min_lr"])[1]
        if highest_min > lowest_lr:
            fail(f"search.min_lr: {search['min_lr'].describe()} reaches {highest_min:g}, above the lowest lr "
                 f"searched ({lowest_lr:g}): a trial that draws a min_lr above its lr fails (min_lr must be <= lr); "
                 f"keep min_lr at most {lowest_lr:g}")


SHAPE_KEYS = ("num_heads", "embed_dim", "model")


def _shape_options(base: TrainConfig, search: dict[str, Distribution]) -> dict[str, tuple] | None:
    """The values of num_heads, embed_dim and model the trials can draw (a fixed key: its one value); None
    where a range is too vast to list."""
    def values(key: str) -> tuple | None:
        if key not in search:
            return (getattr(base, key),)
        dist = search[key]
        if dist.kind == "choice":
            return dist.choices
        if dist.kind in ("int", "int-log") and dist.high - dist.low < 20_000:
            return tuple(range(int(dist.low), int(dist.high) + 1))
        return None  # a float scale is refused elsewhere (whole numbers); a vast range is left to its trials

    options = {k: values(k) for k in SHAPE_KEYS}
    if any(v is None for v in options.values()) or math.prod(len(v) for v in options.values()) > 20_000:
        return None
    return options


def shape_builds(combo: tuple) -> bool:
    """Whether (num_heads, embed_dim, model) builds a model: num_heads must divide embed_dim."""
    shape = width_and_heads(combo[2], combo[1], combo[0])
    return shape is None or shape[0] % shape[1] == 0


def shape_clash_note(space: SearchSpace) -> str | None:
    """A note where the trials can draw a width and a head count that build no model together, though each
    builds with some of the other's values (so the space is kept): `embed_dim: {choice: [32, 48]}` with
    `num_heads: {choice: [3, 4]}` failed every trial that drew 32 and 3, without a word before."""
    searched = [k for k in SHAPE_KEYS if k in space.search]
    if len(searched) < 2 and "model" not in searched:
        return None
    options = _shape_options(space.trial_config({}), space.search)
    if options is None:
        return None
    combos = list(itertools.product(*options.values()))
    bad = [c for c in combos if not shape_builds(c)]
    if not bad:
        return None
    said = " with ".join(f"{k} {v}" for k, v in reversed(list(zip(SHAPE_KEYS, bad[0]))) if k in searched)
    build = "builds" if len(bad) == 1 else "build"
    return (f"note: {len(bad)} of the {len(combos)} combinations of {' and '.join(reversed(searched))} the trials can "
            f"draw {build} no model (num_heads must divide embed_dim; {said}, say): a trial that draws one fails as "
            "it starts")


def _check_heads(base: TrainConfig, fixed: dict, search: dict[str, Distribution], fail) -> None:
    """num_heads must divide embed_dim: a head count, width or model that builds with none of what the trials
    can draw for the others is refused. Each trial with it failed as its model was built. A range is checked
    value by value (`embed_dim: {int: [32, 96]}` with 4 heads: 5 of 6 trials failed)."""
    keys = SHAPE_KEYS
    options = _shape_options(base, search)
    if options is None:
        return
    built = [combo for combo in itertools.product(*options.values()) if shape_builds(combo)]

    def said(key: str) -> str:
        if key in search:
            dist = search[key]
            return f"{key} {list(dist.choices)}" if dist.kind == "choice" else f"{key} {dist.describe()}"
        value = options[key][0]
        return f"the model family's {key}" if value is None else f"{key} {value!r}"

    for i, key in enumerate(keys):
        fits = {combo[i] for combo in built}
        bad = [v for v in options[key] if v is not None and v not in fits]
        if not bad:
            continue
        where = f"search.{key}" if key in search else f"fixed.{key}" if key in fixed else key
        others = " and ".join(said(k) for k in keys if k != key)
        if key in search and search[key].kind != "choice":
            good = [v for v in options[key] if v in fits]
            fix = f"search a choice of those that build (choice: [{listed(good, 8)}])" if good else \
                "none of it builds"
            fail(f"{where}: {search[key].describe()} draws {len(bad)} of {len(options[key])} values that build no "
                 f"model with {others} (num_heads must divide embed_dim: {listed(bad, 5)}): every trial that "
                 f"drew one would fail; {fix}")
        fail(f"{where}: {bad[0]!r} builds no model with {others} (num_heads must divide embed_dim): every trial "
             "with it would fail")
    # The first trial runs TrainConfig's value of each searched key (embed_dim unset: the model's own width); a
    # fixed head count that divides only the searched widths stopped the search with "must divide embed_dim 64".
    first = {k: getattr(TrainConfig(), k) if k in search else getattr(base, k) for k in keys}
    shape = width_and_heads(first["model"], first["embed_dim"], first["num_heads"])
    if shape is not None and shape[0] % shape[1]:
        drawn = [k for k in keys if k in search]  # at TrainConfig's value in that trial
        said = ", ".join(f"{k} {first[k]!r}" if first[k] is not None else f"{k} unset (model {first['model']}'s "
                         f"own)" for k in drawn)
        other = " or a fixed num_heads that divides " + str(shape[0]) if "num_heads" in fixed else \
            " or a fixed embed_dim that " + str(shape[1]) + " divides" if "embed_dim" in fixed else ""
        fail(f"the recommended defaults, every search's first trial, run TrainConfig's {said}: num_heads {shape[1]} "
             f"does not divide embed_dim {shape[0]} there, so that trial builds no model; fix "
             f"{' and '.join(drawn)} instead of searching{',' if other else ''}{other}")


def _check_effect(base: TrainConfig, fixed: dict, search: dict[str, Distribution], fail) -> None:
    """A distillation key set where no trial has a teacher (or the temperature where none distils softly),
    lr_base_batch where lr is not scaled, or a searched lr_scaling where every trial's batch is lr_base_batch,
    changes nothing: every trial trained alike whatever was drawn, and the report ranked noise."""
    def can_be(key: str, wanted) -> bool:
        return any(wanted(v) for v in search[key].choices) if key in search else wanted(getattr(base, key))

    has_teacher = can_be("teacher", lambda v: v is not None)
    needs = {"distill_mode": ("teacher", lambda v: v is not None, "a teacher (fix or search `teacher`)"),
             "distill_weight": ("teacher", lambda v: v is not None, "a teacher (fix or search `teacher`)"),
             "distill_temperature": ("distill_mode", lambda v: v == "soft" and has_teacher,
                                     "soft distillation (distill_mode: soft, fixed or searched, with a teacher)"),
             # lr_scaling none uses lr as given whatever the batch: lr_base_batch then scales nothing
             "lr_base_batch": ("lr_scaling", lambda v: v != "none", "lr_scaling linear or sqrt (with none, lr is "
                               "the rate used whatever the batch)")}
    for key, (other, wanted, what) in needs.items():
        if (key in search or key in fixed) and not can_be(other, wanted):
            where = "search" if key in search else "fixed"
            fail(f"{where}.{key}: has no effect without {what}: every trial would train the same whatever it is")
    # every rule scales lr by batch_size / lr_base_batch: where the two are one number, each rule is lr as given
    if "lr_scaling" in search and not {"batch_size", "lr_base_batch"} & search.keys() \
            and base.batch_size == base.lr_base_batch:
        fail(f"search.lr_scaling: has no effect where batch_size equals lr_base_batch ({base.batch_size}) in every "
             "trial: each rule then uses lr as given, so every trial would train the same whatever it is; search "
             "batch_size too, or fix lr_scaling")


# searched keys that change the training loss itself, not only how well a trial fits: with `metric: train_loss`
# their trials' values are not comparable, and the search ranked the loss's definition (label smoothing 0.3 on
# 10 classes puts the loss of a perfect fit at 1.18 nats, 0 without it)
LOSS_KEYS = {"label_smoothing": "smoothed targets raise its floor",
             "aug_strength": "it changes the training images, and from strength 2/6 on Mixup and CutMix mix their "
                             "targets",
             "teacher": "a teacher adds the distillation term", "distill_mode": "it chooses the distillation term",
             "distill_weight": "it weighs the distillation term",
             "distill_temperature": "it shapes the distillation term"}


def _check_metric(metric: str, search: dict[str, Distribution], fail) -> None:
    """`metric: train_loss` with a searched key that changes the training criterion (LOSS_KEYS): refused."""
    if metric != "train_loss":
        return
    for key, why in LOSS_KEYS.items():
        if key in search:
            fail(f"search.{key}: changes the training loss itself ({why}), so with metric train_loss the trials' "
                 f"values are not comparable: the search would rank what each trial's loss measures, not how good "
                 f"its model is; rank by val_acc or val_loss, or fix {key}")


def _highest(base: TrainConfig, search: dict[str, Distribution], key: str) -> list:
    """The values of `key` the trials can draw that matter for a maximum: a choice's every value, a range's high
    end, else the fixed (or TrainConfig's) value."""
    if key not in search:
        return [getattr(base, key)]
    got = search[key]
    return list(got.choices) if got.kind == "choice" else [got.high]


def _deepest(base: TrainConfig, search: dict[str, Distribution]) -> int | None:
    """The blocks of the deepest model the trials can draw; None where one of the models is no ViT."""
    depths = [model_depth(m, d) for m in _highest(base, search, "model") for d in _highest(base, search, "depth")]
    return None if None in depths else max(depths)


def _check_freeze(base: TrainConfig, search: dict[str, Distribution], fail) -> None:
    """A searched freeze_blocks past the deepest model the trials can draw: from the model's depth on, every
    value freezes all its blocks (only the head trains), so those trials trained alike (`freeze_blocks:
    {int: [0, 12]}` on vit_micro's 4 blocks drew 5 and 7 and ranked them as knobs)."""
    dist = search.get("freeze_blocks")
    if dist is None:
        return
    deepest = _deepest(base, search)
    if deepest is None:  # (a model that is no ViT: TrainConfig refuses freeze_blocks for it)
        return
    top = max(_highest(base, search, "freeze_blocks"))
    if top > deepest:
        fail(f"search.freeze_blocks: {dist.describe()} reaches {top}, past the {deepest} blocks of the deepest model "
             f"the trials can draw: from {deepest} on it freezes every block (only the head trains), so every value "
             f"from {deepest} on trains the same; search at most {deepest}")


def _check_drop_path(base: TrainConfig, search: dict[str, Distribution], fail) -> None:
    """A searched drop_path where every model the trials can draw has one block: timm's stochastic-depth rates
    rise linearly from 0 at the first block, so a lone block gets 0, and every trial trained alike."""
    if "drop_path" in search and _deepest(base, search) == 1:
        fail("search.drop_path: has no effect where every trial's model has one block (depth 1): stochastic depth "
             "rises from 0 at the first block (timm's rule), so a lone block is never dropped and every trial would "
             "train the same whatever is drawn; fix drop_path, or search deeper models")


def _gpus_available() -> float:
    """`gpu: auto`: one GPU per trial where this machine has one (until the packing probe says more fit),
    else none (CPU-only trials)."""
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


def _number(value: Any) -> Any:
    """PyYAML reads `1e-4` (no dot) as a string; accept numeric spellings for float bounds."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _section(raw: dict, key: str, allowed: set[str] | None, fail) -> dict:
    section = raw.get(key) or {}
    if not isinstance(section, dict):
        fail(f"{key}: must be a mapping, got {section!r}")
    if allowed is not None:
        for sub in section:
            if sub not in allowed:
                fail(f"unknown key {key}.{sub}; valid keys: {', '.join(sorted(allowed))}")
    return section


def _distribution(key: str, spec: Any, fail) -> Distribution:
    if isinstance(spec, dict) and len(spec) > 1 and len(kinds := [k for k in spec if k in DISTRIBUTIONS]) == 1:
        # `{int: [32, 128], step: 32}` (Optuna's step, log): "must be one distribution" did not say what was extra
        extra = next(k for k in spec if k not in DISTRIBUTIONS)
        fail(f"search.{key}: unknown key {extra!r} beside {kinds[0]}; a distribution takes only its [low, high] or "
             "its list of choices (for steps, list the values as a choice; for a log scale, use loguniform or int-log)")
    if not isinstance(spec, dict) or len(spec) != 1:
        fail(f"search.{key} must be one distribution like {{loguniform: [1.0e-4, 1.0e-2]}}; "
             f"one of {', '.join(DISTRIBUTIONS)}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        fail(f"search.{key}: unknown distribution {kind!r}; valid: {', '.join(DISTRIBUTIONS)}")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            fail(f"search.{key}.choice is {args!r}, but must be a non-empty list")
        if len(set(map(repr, args))) != len(args):
            fail(f"search.{key}.choice {args!r} repeats a value")
        return Distribution(kind, choices=tuple(args))
    if not isinstance(args, list) or len(args) != 2:
        fail(f"search.{key}.{kind} is {args!r}, but must be [low, high]")
    low, high = (_number(v) if kind in ("loguniform", "uniform") else v for v in args)
    numeric = (int,) if kind in ("int", "int-log") else (int, float)
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, numeric):
            fail(f"search.{key}.{kind} bound {bound!r} must be {'an integer' if numeric == (int,) else 'a number'}")
    if not (math.isfinite(low) and math.isfinite(high)):
        fail(f"search.{key}.{kind} is [{low}, {high}], but its bounds must be finite numbers")
    if not low < high:
        fail(f"search.{key}.{kind} is [{low}, {high}], but must have low < high (empty or inverted range)")
    if kind in ("loguniform", "int-log") and low <= 0:
        fail(f"search.{key}.{kind} low is {low}, but must be > 0 for a log scale")
    if kind in ("loguniform", "uniform"):
        low, high = float(low), float(high)
    return Distribution(kind, low, high)


def experiment_space(exp_dir: Path, flag: str) -> SearchSpace:
    """An experiment folder's space.yaml, refused where it was edited since its search started (run.json
    keeps the space as written then): its trials were drawn from that space, Tune's saved state and the
    study hold it, and a resume of an edited file ran with a mix of both (12 trials reported as "12 of 14
    finished; interrupted", and no reports)."""
    import json

    path = exp_dir / "space.yaml"
    raw = read_yaml(path, "search space")
    try:
        recorded = json.loads((exp_dir / "run.json").read_text()).get("space")
    except (OSError, ValueError, AttributeError):
        recorded = None  # (a search started before the space was recorded: nothing to compare)
    now = json.loads(json.dumps(raw, default=str))
    for doc in (recorded, now):  # data that moved may be given its new path (its fingerprint is checked)
        if isinstance(doc, dict) and isinstance(doc.get("fixed"), dict):
            doc["fixed"].pop("data", None)
    if recorded is not None and (change := _first_change(recorded, now)):
        raise ConfigError(f"{flag} {str(exp_dir)!r}: its space.yaml was edited since the search started ({change}), "
                          "but its trials were drawn from the space as it was; restore the file (more trials: "
                          "--extend with --trials N), or copy the edited one elsewhere and start a new search with "
                          "--space COPY")
    return parse_space(raw, origin=str(path), new=False)


def _first_change(before: Any, now: Any, where: str = "") -> str | None:
    """The first key (dotted) whose value differs between two parsed YAML documents, as a phrase."""
    if isinstance(before, dict) and isinstance(now, dict):
        for key in [*before, *(k for k in now if k not in before)]:
            if key not in now or key not in before:
                return f"{where}{key} {'removed' if key not in now else 'added'}"
            if (change := _first_change(before[key], now[key], f"{where}{key}.")) is not None:
                return change
        return None
    if before != now:
        return f"{where.rstrip('.') or 'the space'} is {now!r} now and was {before!r}"
    return None
