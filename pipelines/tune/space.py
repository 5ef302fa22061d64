"""The search space: ``tune.space`` in YAML, checked before Ray starts, turned into Ray Tune's sampling domains
and sampled with a seed.

Each entry is a dotted ``train``, ``loss`` or ``anchors`` key and one sampler::

    train.lr: {loguniform: [1.0e-4, 1.0e-2]}        # learning rate and weight decay: log scale
    train.jitter: {uniform: [0.0, 0.3]}
    train.batch_size: {randint: [4, 9]}            # Ray's randint: the high end is excluded
    anchors.k: {choice: [3, 5, 7, 9]}

The trials are drawn here, before the search, from Ray's own domains with one seeded random state (trial by
trial, key by key in the space's order), so the same config gives the same trials, a longer search keeps the
first ones, and every value the space can give is checked against the config when it loads, not in a trial.
Nothing here imports Ray at module level: :func:`check_space` runs as a command loads its config.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.config import PipelineConfig, with_overrides, yaml_keys
from yolov2.errors import ConfigError

SAMPLERS = ("loguniform", "uniform", "choice", "randint")
LOG_SCALE_KEYS = ("train.lr", "train.weight_decay")  # sampled on a log scale (loguniform or a choice), all > 0
SEARCHABLE_SECTIONS = ("train", "loss", "anchors")
RANGE_SAMPLERS = ("loguniform", "uniform", "randint")  # take [low, high]


@dataclass(frozen=True)
class Dimension:
    """One searched key: ``key`` (dotted), its ``sampler`` and its arguments ((low, high), or the choices;
    lists inside are tuples, so a dimension is hashable and cannot change under a search)."""

    key: str
    sampler: str
    args: tuple[Any, ...]

    @property
    def log_scale(self) -> bool:
        """Plotted and compared on a log axis (the trials' parameter plot)."""
        return self.sampler == "loguniform"


def parse_space(space: dict[str, Any], cfg: PipelineConfig, source: str) -> list[Dimension]:
    """The validated dimensions of ``space``, in its order: a bad entry is a :class:`ConfigError` naming
    ``tune.space.<key>`` when the config loads, before Ray starts or a trial trains."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            f"{source}: tune.space must map at least one {'/'.join(SEARCHABLE_SECTIONS)} key to a sampler, "
            f"e.g. train.lr: {{loguniform: [1.0e-4, 1.0e-2]}}; got {space!r}"
        )
    return [_dimension(key, entry, cfg, source) for key, entry in space.items()]


def _dimension(key: Any, entry: Any, cfg: PipelineConfig, source: str) -> Dimension:
    where = f"{source}: tune.space.{key}"
    _check_key(key, where)
    if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in SAMPLERS:
        raise ConfigError(
            f"{where} must be exactly one sampler of {', '.join(SAMPLERS)}, e.g. {{uniform: [0.0, 0.3]}}; got {entry!r}"
        )
    sampler, args = next(iter(entry.items()))
    if not isinstance(args, (list, tuple)) or not args:
        raise ConfigError(f"{where}: {sampler} takes a non-empty list, got {args!r}")
    if key in LOG_SCALE_KEYS and sampler not in ("loguniform", "choice"):
        raise ConfigError(f"{where} is sampled on a log scale: use loguniform (or a choice of values), not {sampler}")
    if sampler in RANGE_SAMPLERS:
        _check_range(sampler, list(args), where)
    for value in _reachable(sampler, list(args)):
        _check_value(cfg, key, value, where)
    if key in LOG_SCALE_KEYS:
        bad = [v for v in args if not _is_number(v) or v <= 0]
        if bad:
            raise ConfigError(f"{where}: every {key} must be > 0 (it is sampled on a log scale), got {bad}")
    if sampler == "uniform":
        _check_float_key(cfg, key, list(args), where)
    if key == "anchors.k" and cfg.anchors.pinned:
        raise ConfigError(f"{where}: anchors.pinned is set, so anchors.k is not used; drop one of the two")
    return Dimension(key, sampler, tuple(_frozen(v) for v in args))


def _check_key(key: Any, where: str) -> None:
    """A dotted ``section.key`` of a searchable section that the config has (flattened keys included)."""
    section, _, name = key.partition(".") if isinstance(key, str) else ("", "", "")
    if section not in SEARCHABLE_SECTIONS or not name:
        raise ConfigError(
            f"{where}: not a searchable key; use a dotted key of {', '.join(SEARCHABLE_SECTIONS)}, e.g. train.lr"
        )
    valid = yaml_keys(typing.get_type_hints(PipelineConfig)[section])
    if name not in valid:
        close = difflib.get_close_matches(name, list(valid), n=3)
        hint = f"; did you mean {', '.join(f'{section}.{c}' for c in close)}?" if close else ""
        raise ConfigError(f"{where}: unknown key {key} (no such key in {section}){hint}")


def _check_range(sampler: str, args: list[Any], where: str) -> None:
    if len(args) != 2 or not all(_is_number(a) for a in args):
        raise ConfigError(f"{where}: {sampler} takes [low, high], two numbers, got {args!r}")
    low, high = args
    if sampler == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint takes two integers [low, high) (high excluded), got {args!r}")
    if not low < high:
        raise ConfigError(f"{where}: empty range [{low}, {high}]: low must be below high")
    if sampler == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {low}; use uniform for a range from 0")


def _reachable(sampler: str, args: list[Any]) -> list[Any]:
    """The values worth checking against the config: every choice, or a range's two ends (randint's high end
    is excluded, so its last value is high - 1)."""
    if sampler == "randint":
        return [args[0], args[1] - 1]
    return args


def _check_value(cfg: PipelineConfig, key: str, value: Any, where: str) -> None:
    try:
        with_overrides(cfg, {key: value}, where)
    except ConfigError as e:
        raise ConfigError(f"{where}: the value {value!r} is not valid for {key} ({e})") from e


def _check_float_key(cfg: PipelineConfig, key: str, args: list[Any], where: str) -> None:
    """uniform draws floats between the ends: an integer key (whose ends alone may pass) refuses them."""
    try:
        with_overrides(cfg, {key: (args[0] + args[1]) / 2 + 0.25}, where)  # not integral, even for int ends
    except ConfigError as e:
        raise ConfigError(f"{where}: uniform draws floats, which {key} does not take; use randint or choice") from e


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def ray_param_space(dims: list[Dimension]) -> dict[str, Any]:
    """``{key: Ray Tune domain}`` (``ray.tune.loguniform``, ``uniform``, ``choice`` or ``randint``): Ray's own
    samplers, so a trial's values are drawn as Ray Tune would draw them."""
    import ray.tune

    def domain(dim: Dimension) -> Any:
        if dim.sampler == "loguniform":
            return ray.tune.loguniform(*dim.args)
        if dim.sampler == "uniform":
            return ray.tune.uniform(*dim.args)
        if dim.sampler == "randint":
            return ray.tune.randint(*dim.args)
        return ray.tune.choice(list(dim.args))

    return {dim.key: domain(dim) for dim in dims}


def sample_trials(dims: list[Dimension], num_trials: int, seed: int) -> list[dict[str, Any]]:
    """``num_trials`` configs ``{key: value}`` drawn from Ray's domains with one RNG seeded with ``seed``, trial
    by trial and key by key in the space's order (so more trials keep the first ones), as plain Python values
    (a choice of lists gives a list) that :func:`trial_config` takes."""
    domains = ray_param_space(dims)
    rng = np.random.default_rng(seed)
    return [{d.key: _plain(domains[d.key].sample(random_state=rng)) for d in dims} for _ in range(num_trials)]


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers and tuples as lists: YAML-, JSON- and MLflow-safe, and new objects, so
    no two trials share a list."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def trial_config(cfg: PipelineConfig, overrides: dict[str, Any], source: str) -> PipelineConfig:
    """``cfg`` with one trial's sampled values, checked as a config file's are."""
    return with_overrides(cfg, overrides, source)


def check_space(cfg: PipelineConfig, source: str) -> None:
    """The config's search space, checked as the stage commands load a config (before Ray starts): a
    :class:`ConfigError` naming the key."""
    parse_space(cfg.tune.space, cfg, source)
