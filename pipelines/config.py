"""Every option of the pipeline as plain dataclasses, loaded from YAML and validated with clear errors.

Read top to bottom: one dataclass per stage, each field with its default and a short comment. The settings
the library takes (model, loss, augmentation, training loop, predictor, synthetic data) are the dataclasses of
``yolov2/config.py``, embedded here; an embedded section marked :data:`FLAT` keeps its keys in the parent's
YAML mapping (``train.lr`` is ``TrainConfig.loop.lr``, ``evaluate.conf_thresh`` is
``EvaluateConfig.predict.conf_thresh``).
``load_config(path, overrides=["train.epochs=3"])`` is the only entry point the stages use.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from yolov2.config import AugmentConfig, LoopConfig, LossConfig, ModelConfig, PredictConfig, SyntheticConfig
from yolov2.errors import ConfigError

FLAT = {"flatten": True}  # field metadata: the embedded dataclass's keys sit in the parent's mapping


@dataclass
class DataConfig:
    """Where the raw dataset comes from and how it is read."""

    kind: Literal["synthetic", "voc", "coco", "yolo"] = "synthetic"
    root: str | None = None  # an existing local dataset folder; None means download (voc/coco) or generate
    download: list[str] = field(default_factory=list)  # archive names from yolov2.data.download, e.g. voc2007_trainval
    splits: dict[str, list[str]] = field(
        default_factory=lambda: {"train": ["train"], "val": ["val"], "test": ["test"]}
    )  # our split name -> the dataset's own split names (VOC ImageSets files, COCO json stems)
    # auto: from the dataset (the VOC downloads: the 20 VOC classes; another VOC folder: the names in the train
    # split's annotations, sorted; COCO: the categories in id order; YOLO: classes.txt, *.names or data.yaml;
    # generated data: the generator's); yolov2/data/class_names.py. A list: label i is the i-th name.
    class_names: list[str] | Literal["auto"] = "auto"
    # a list that leaves out more than half of the boxes stops the shard stage, naming the other classes;
    # True: train on the listed class_names only, the other boxes are skipped as rejects
    skip_unknown_classes: bool = False
    # > 0: carve a val split out of train (this share of its images, picked by a seeded hash of the image id;
    # yolov2/data/val_split.py); only when data.splits has no val split
    val_fraction: float = 0.0
    val_seed: int = 0  # which images the carve-out takes
    strict: bool = False  # True: the first bad input stops the stage with an error naming the file
    max_image_pixels: int = 89_478_485  # larger images are rejected (decompression-bomb guard; PIL's default)
    # YOLO9000: an image folder root/<class>/<image> of classification-only samples (labels, no boxes) trained
    # beside the detection images (train.class_only_ratio of them per detection image); its classes follow the
    # dataset's in the class names
    class_only_root: str | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ShardConfig:
    """WebDataset tar shards (pipelines/shard.py)."""

    max_bytes: int = 256 * 1024 * 1024  # start a new shard after this many bytes
    max_count: int = 1000  # or after this many images
    records_per_task: int = 500  # records per Ray task
    reencode: bool = False  # re-encode every image as JPEG (quality below); otherwise keep original bytes
    max_side: int | None = None  # downscale (and re-encode) images whose longer side exceeds this
    jpeg_quality: int = 95


@dataclass
class AnchorsConfig:
    """k-means anchors (pipelines/anchors.py)."""

    k: int = 5
    seed: int = 0
    n_init: int = 3
    max_iter: int = 300
    update: Literal["mean", "median"] = "mean"
    include_difficult: bool = True
    partitions: int = 4
    pinned: list[tuple[float, float]] | None = None  # use these (grid units) instead of clustering


@dataclass
class TrainConfig:
    """Training (pipelines/train/). ``input_size`` is training's and validation's; evaluation has its own
    (``evaluate.input_size``)."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    loop: LoopConfig = field(default_factory=LoopConfig, metadata=FLAT)  # epochs, lr, schedule, ...
    batch_size: int = 8  # per worker, per step
    effective_batch: int = 64  # gradient accumulation reaches this across workers (Darknet: 64)
    input_size: int = 416
    multiscale: bool = True
    multiscale_sizes: tuple[int, int, int] = (320, 608, 32)  # min, max, step
    multiscale_every: int = 10
    optimizer: Literal["sgd", "adamw"] = "sgd"  # Darknet's SGD, or AdamW (faster from scratch; yolov2/engine/optim.py)
    momentum: float = 0.9  # SGD momentum, or AdamW's beta1
    weight_decay: float = 0.0005
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: from the hardware (yolov2/engine/precision.py)
    channels_last: bool | Literal["auto"] = "auto"  # auto: where it measured faster (yolov2/engine/precision.py)
    ema: bool = False
    ema_decay: float = 0.9998
    ema_ramp: float = 2000.0  # optimizer steps over which the EMA decay ramps up (yolov2/engine/ema.py)
    freeze_backbone_layers: int = 0
    init_weights: str | None = None  # Darknet .weights (partial ok) or a checkpoint .pt
    init_layers: int | None = None  # load only the first N conv layers of a Darknet file
    augmentation: AugmentConfig = field(default_factory=AugmentConfig, metadata=FLAT)  # augment, jitter, ...
    ingest: Literal["webdataset", "ray_data"] = "webdataset"
    # YOLO9000: classification-only samples (the shard stage's train_class_only split) per detection sample in an
    # epoch; the paper oversamples COCO so that ImageNet outnumbers it 4:1
    class_only_ratio: float = 4.0
    loader_workers: int = 0
    max_failures: int = 2
    seed: int = 0
    register_name: str | None = "yolov2"
    # True: train with the tune stage's best_config.yaml applied over these sections (and its anchors.k's
    # anchors); the tune stage then runs first, and its fingerprint is part of train's
    from_tune: bool = False
    # pretrain: start from the pretrain stage's backbone (its Darknet partial weights file, every backbone conv
    # layer), instead of init_weights; the pretrain stage then runs first, and its fingerprint is part of train's
    init_from: Literal["pretrain"] | None = None


DEFAULT_SEARCH_SPACE: dict[str, dict[str, list[Any]]] = {
    "train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
    "train.weight_decay": {"loguniform": [1.0e-5, 1.0e-1]},
    "train.jitter": {"uniform": [0.0, 0.3]},
    "train.hue": {"uniform": [0.0, 0.1]},
    "train.saturation": {"uniform": [1.0, 1.5]},
    "train.exposure": {"uniform": [1.0, 1.5]},
    "train.multiscale_sizes": {"choice": [[288, 448, 32], [320, 512, 32], [352, 608, 32]]},
    "anchors.k": {"choice": [3, 5, 7, 9]},
}
"""The tune stage's search space when the config names none: a dotted ``train``, ``loss`` or ``anchors`` key ->
``{sampler: arguments}`` (pipelines/tune/space.py)."""


@dataclass
class TuneConfig:
    """Hyperparameter search over the train stage (pipelines/tune/): sampled trials, ASHA early stopping on
    the val split's VOC07 mAP@0.5, every trial a child MLflow run."""

    enabled: bool = False  # run the tune stage in full.py (so does --stages tune, or train.from_tune: true)
    num_trials: int = 8
    seed: int = 0  # the sampled configs: the same seed and space give the same trials
    max_concurrent_trials: int | None = None  # None: as many as the cluster's CPUs (GPUs) hold at once
    num_workers: int | None = None  # train workers per trial (DDP inside a trial); None: train.num_workers
    max_epochs: int | None = None  # a trial's length, ASHA's max_t; None: train.epochs
    grace_period: int = 1  # epochs every trial runs before ASHA may stop it
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor of the trials at each rung
    # dotted train / loss / anchors key -> {loguniform|uniform: [low, high]} or {randint: [low, high)} or
    # {choice: [values...]}
    space: dict[str, dict[str, list[Any]]] = field(default_factory=lambda: dict(DEFAULT_SEARCH_SPACE))


@dataclass
class ClassifierPhase:
    """One phase of the classifier pretraining, Darknet's ``[net]`` section of ``darknet19.cfg`` (the low
    resolution phase) or ``darknet19_448.cfg`` (the high one): the poly learning rate with its burn-in, and the
    training crop (short side resized to a value in [min_crop, max_crop], then a ``size`` x ``size`` crop)."""

    epochs: int = 160  # the paper: 160 epochs on ImageNet (darknet19.cfg's max_batches is in batches of 128)
    lr: float = 0.1  # for a batch of 128 images (all workers): scale it with pretrain.batch_size x num_workers
    burn_in: int = 1000  # optimizer steps of Darknet's burn-in: lr * (step / burn_in) ** power
    power: float = 4.0  # poly: lr * (1 - step / steps) ** power (and the burn-in's exponent)
    size: int = 256  # the training crop, and the val centre crop (darknet19.cfg: 256; the paper says 224)
    min_crop: int = 128
    max_crop: int = 448


def _high_resolution_phase() -> ClassifierPhase:
    return ClassifierPhase(epochs=10, lr=0.001, burn_in=0, size=448, min_crop=448, max_crop=512)


@dataclass
class PretrainConfig:
    """The backbone trained as a classifier before detection (pipelines/pretrain/): the low resolution phase,
    then the high one at twice the size, Darknet's recipe; ``train.init_from: pretrain`` starts the detector
    from it."""

    enabled: bool = False  # run it in full.py (so does --stages pretrain, or train.init_from: pretrain)
    # crops: object crops from the shard stage's training boxes; imagefolder: root/<class>/*.jpg;
    # synthetic: crops of generated shapes (data.synthetic's generator, its own images)
    source: Literal["crops", "imagefolder", "synthetic"] = "crops"
    root: str | None = None  # imagefolder: the folder of class folders
    margin: float = 0.15  # crops: context added on each side, a fraction of the box's side
    min_side: int = 16  # crops: smaller crops (after clipping to the image) are rejects
    synthetic_images: int = 400  # synthetic: generated images whose shapes are cut out
    val_fraction: float = 0.1  # a stratified val split (each class in this proportion)
    seed: int = 0  # the val split, the shuffling, the initial weights
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    batch_size: int = 64  # per worker, per step: 128 on the 2 workers, Darknet's batch, which the lr values assume
    momentum: float = 0.9
    weight_decay: float = 0.0005
    angle: float = 7.0  # rotation, +-degrees
    aspect: float = 4 / 3  # aspect ratio jitter, in [1/aspect, aspect]
    hue: float = 0.1
    saturation: float = 4 / 3  # in [1/saturation, saturation]
    exposure: float = 4 / 3
    low: ClassifierPhase = field(default_factory=ClassifierPhase)
    high: ClassifierPhase = field(default_factory=_high_resolution_phase)  # epochs 0: the low phase only
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    max_failures: int = 2
    log_every: int = 20  # optimizer steps between loss lines


@dataclass
class EvaluateConfig:
    """Evaluation (pipelines/evaluate.py). Its predictor settings are also training's validation's, with
    ``train.input_size`` (pipelines/train/worker.py)."""

    split: str = "test"
    predict: PredictConfig = field(default_factory=PredictConfig, metadata=FLAT)  # input_size, conf_thresh, ...
    batch_size: int = 8
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # as train.amp: auto picks from the hardware
    channels_last: bool | Literal["auto"] = "auto"
    num_actors: int = 2
    cpus_per_actor: float = 0.75  # below 1 so a pool holding every CPU leaves room for the shard readers
    gpus_per_actor: float = 0.0
    metrics: list[str] = field(default_factory=lambda: ["voc07", "voc12", "coco"])
    coco_backend: Literal["faster_coco_eval", "hotcoco", "pycocotools"] = "faster_coco_eval"
    coco_workers: int = 2
    num_sample_images: int = 16
    checkpoint: Literal["best", "last"] = "best"  # best: chosen on the val split (last when there is none)


@dataclass
class MlflowConfig:
    """Experiment tracking. tracking_uri None: SQLite inside the workspace (works with nothing running)."""

    tracking_uri: str | None = None
    experiment: str = "yolov2"
    fallback_to_local: bool = False  # server unreachable at start: log locally instead of failing
    flush_timeout: float = 120.0  # seconds training waits at its end for an unreachable server (then: local file)


@dataclass
class RayConfig:
    """How the stages reach Ray. address None: join a running cluster if any, else start a local one."""

    address: str | None = None
    num_cpus: int | None = None  # for a local cluster only


@dataclass
class PipelineConfig:
    """The whole pipeline: one section per stage."""

    workspace: str = "workspace"
    data: DataConfig = field(default_factory=DataConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    anchors: AnchorsConfig = field(default_factory=AnchorsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    ray: RayConfig = field(default_factory=RayConfig)


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML file (``yaml.safe_load``), apply ``section.key=value`` overrides, validate.

    Unknown keys and wrongly typed values raise :class:`ConfigError` naming the key and the file.
    """
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from e
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides or []:
        _apply_override(raw, item)
    cfg = from_dict(PipelineConfig, raw, source)
    check_data(cfg.data, source)
    check_tune(cfg, source)
    check_pretrain(cfg.pretrain, source)
    if cfg.evaluate.predict.tree_walk:
        raise ConfigError(
            f"{source}: evaluate.tree_walk labels boxes with tree nodes, which the ground truth does not use; score "
            "the dataset's classes (the default) or their ancestors (evaluate.tree_depth); walk in yolov2 predict"
        )
    if cfg.model.tree is not None and not Path(cfg.model.tree).is_file():
        raise ConfigError(f"{source}: model.tree: no file {cfg.model.tree} (a Darknet .tree file, e.g. data/9k.tree)")
    return cfg


def check_pretrain(pretrain: PretrainConfig, source: str) -> None:
    """The pretrain section's rules that its types cannot say; :class:`ConfigError` naming the key."""
    if pretrain.source == "imagefolder" and not pretrain.root:
        raise ConfigError(f"{source}: pretrain.source imagefolder needs pretrain.root (a folder of class folders)")
    if not 0.0 < pretrain.val_fraction < 1.0:
        raise ConfigError(f"{source}: pretrain.val_fraction must be in (0, 1), got {pretrain.val_fraction}")
    for name in ("num_workers", "batch_size", "synthetic_images", "min_side"):
        if getattr(pretrain, name) < 1:
            raise ConfigError(f"{source}: pretrain.{name} must be at least 1, got {getattr(pretrain, name)}")
    if pretrain.low.epochs < 1:
        raise ConfigError(f"{source}: pretrain.low.epochs must be at least 1, got {pretrain.low.epochs}")
    for phase in ("low", "high"):
        p: ClassifierPhase = getattr(pretrain, phase)
        if p.epochs < 0 or p.lr <= 0 or p.burn_in < 0 or p.power <= 0:
            raise ConfigError(f"{source}: pretrain.{phase}: epochs and burn_in >= 0, lr and power > 0 ({p})")
        if p.size % 32 or p.size < 32 or not 0 < p.min_crop <= p.max_crop:
            raise ConfigError(
                f"{source}: pretrain.{phase}: size must be a multiple of 32 and 0 < min_crop <= max_crop ({p})"
            )


def check_tune(cfg: PipelineConfig, source: str) -> None:
    """The tune section's numbers. The search space itself is checked by ``pipelines.tune.space.check_space``
    (the stage commands run it before Ray starts). Pinned anchors take ``anchors.k`` out of the default space:
    it would not be used."""
    tune = cfg.tune
    if cfg.anchors.pinned and tune.space == DEFAULT_SEARCH_SPACE:
        tune.space = {key: value for key, value in tune.space.items() if key != "anchors.k"}
    for key in ("num_trials", "grace_period", "reduction_factor"):
        if getattr(tune, key) < 1:
            raise ConfigError(f"{source}: tune.{key} must be at least 1, got {getattr(tune, key)}")
    for key in ("max_concurrent_trials", "num_workers", "max_epochs"):
        if getattr(tune, key) is not None and getattr(tune, key) < 1:
            raise ConfigError(f"{source}: tune.{key} must be at least 1 (or null), got {getattr(tune, key)}")


def with_overrides(cfg: PipelineConfig, overrides: dict[str, Any], source: str) -> PipelineConfig:
    """``cfg`` with dotted keys set (``{"train.lr": 0.003, "anchors.k": 7}``), checked as a config file's
    values are; a :class:`ConfigError` names the key and ``source``."""
    raw = to_dict(cfg)
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        node = raw
        for section in sections:
            node = node.get(section)
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {dotted}: {section} is not a config section")
        if key not in node:
            raise ConfigError(f"{source}: unknown key {dotted}")
        node[key] = value
    return from_dict(PipelineConfig, raw, source)


def check_data(data: DataConfig, source: str) -> None:
    """The rules between ``data`` keys that their types cannot say; :class:`ConfigError` naming the key."""
    if isinstance(data.class_names, list):
        if not data.class_names or not all(isinstance(n, str) and n.strip() for n in data.class_names):
            raise ConfigError(
                f"{source}: data.class_names must list non-empty names (or be auto), got {data.class_names!r}"
            )
        repeated = sorted({n for n in data.class_names if data.class_names.count(n) > 1})
        if repeated:
            raise ConfigError(f"{source}: data.class_names repeats {', '.join(repeated)}")
    if not 0.0 <= data.val_fraction < 1.0:
        raise ConfigError(f"{source}: data.val_fraction must be in [0, 1), got {data.val_fraction}")
    if data.val_fraction > 0 and "val" in data.splits:
        raise ConfigError(
            f"{source}: data.val_fraction carves a val split out of train only when data.splits has none, but it "
            f"maps val to {data.splits['val']}; remove val from data.splits or set data.val_fraction: 0"
        )
    if data.val_fraction > 0 and "train" not in data.splits:
        raise ConfigError(f"{source}: data.val_fraction carves val out of train, but data.splits has no train split")
    shared = sorted(set(data.splits.get("val", [])) & set(data.splits.get("test", [])))
    if shared:
        raise ConfigError(
            f"{source}: data.splits maps both val and test to {', '.join(shared)}: best.pt would be chosen on the "
            "test images, and the test score would be optimistic. Drop val from data.splits and set "
            "data.val_fraction (e.g. 0.15) to carve a val split out of train instead"
        )


def _apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    dotted, value_text = item.split("=", 1)
    keys = dotted.strip().split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {key} is not a section")
    node[keys[-1]] = yaml.safe_load(value_text) if value_text.strip() else None


def _is_flat(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("flatten"))


def yaml_keys(cls: type) -> dict[str, tuple[tuple[str, ...], Any]]:
    """The YAML keys of dataclass ``cls``: key -> (the flattened fields it sits under, its type)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[tuple[str, ...], Any]] = {}
    for f in dataclasses.fields(cls):
        inner: dict[str, tuple[tuple[str, ...], Any]] = {f.name: ((), hints[f.name])}
        if _is_flat(f):
            inner = {k: ((f.name, *path), tp) for k, (path, tp) in yaml_keys(hints[f.name]).items()}
        for key, value in inner.items():
            if key in out:
                raise TypeError(f"{cls.__name__}: key {key!r} appears twice (a flattened section repeats it)")
            out[key] = value
    return out


@dataclass
class _Section:
    """The values read so far for one flattened field (told apart from a value that is itself a mapping)."""

    values: dict[str, Any]


def _build(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)``, with each flattened section built from its own sub-mapping of ``values``."""
    hints = typing.get_type_hints(cls)
    kwargs = {name: value for name, value in values.items() if not isinstance(value, _Section)}
    for f in dataclasses.fields(cls):
        if _is_flat(f):
            section = values.get(f.name)
            kwargs[f.name] = _build(hints[f.name], section.values if section else {})
    return cls(**kwargs)


def from_dict(cls: type, raw: Any, source: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, recursively, checking keys and types.

    A field marked :data:`FLAT` reads its own fields from this same mapping.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix or 'config'} must be a mapping, got {raw!r}")
    keys = yaml_keys(cls)
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys here: {', '.join(sorted(keys))}"
        )
    values: dict[str, Any] = {}
    for name, value in raw.items():  # in the mapping's order: the first bad value is the one reported
        path, tp = keys[name]
        node = values
        for section in path:
            node = node.setdefault(section, _Section({})).values
        node[name] = _coerce(tp, value, source, prefix + name)
    return _build(cls, values)


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, source, key)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"{source}: {key} must be {' or '.join(_describe_type(a) for a in args)}, got {value!r}")
    if origin is Literal:
        if value is False and "off" in args:  # YAML 1.1 reads a bare `off` as false
            return "off"
        if value not in args:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{source}: {key} must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        k_tp, v_tp = args or (Any, Any)
        return {_coerce(k_tp, k, source, key): _coerce(v_tp, v, source, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{source}: {key} must be {tp.__name__}, got {value!r}")
    return value


def _describe_type(tp: Any) -> str:
    """A type as a config error names it: ``bool``, ``one of 'auto', 'off'``, ``null``."""
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp))


def to_dict(cfg: Any) -> Any:
    """A dataclass config as plain YAML/JSON-able data (tuples become lists; flattened sections inline)."""
    if dataclasses.is_dataclass(cfg):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cfg):
            value = to_dict(getattr(cfg, f.name))
            if _is_flat(f):
                out.update(value)
            else:
                out[f.name] = value
        return out
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}``, for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
