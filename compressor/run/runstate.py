"""The run folder's state: where each result lives and whether it may be reused, resumed or must be refused.

Every result folder (``teacher/``, ``pruned/``, one per stage) gets ``fingerprint.json`` (its inputs and their
hash, :mod:`compressor.run.fingerprint`) before any work on it starts, and a *marker* file written last (a stage's
``stage.json``, the teacher's ``dev_metrics.json``, the pruned start's ``prune.json``): the marker's presence
means "finished". On a rerun each folder is, before any work starts:

* ``finished`` (marker, same fingerprint): reused as it is;
* ``resume`` (checkpoints, no marker, same fingerprint): training continues from the last checkpoint;
* ``fresh`` (nothing to reuse): trained from the start;
* refused with one line (:class:`StaleError`) when it was finished, or interrupted with checkpoints, under
  other inputs: reusing it would report a result of another recipe, and resuming it would continue another
  schedule (a new batch size would skip the wrong batches). Folders written before fingerprints were
  recorded are refused the same way: their inputs cannot be checked.
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.run.fingerprint import describe_change, finetune_inputs, fingerprint, run_inputs, stage_inputs
from ernie_common.errors import UserError
from ernie_common.io import read_json, write_json_atomic

FINGERPRINT_FILE = "fingerprint.json"
CHECKPOINTS = "checkpoints"


class StaleError(UserError):
    """A result folder that cannot be reused or resumed under this recipe; one line naming the change and the fix."""


class Status(enum.Enum):
    FINISHED = "finished"
    RESUME = "resume"
    FRESH = "fresh"


@dataclass(frozen=True)
class Result:
    """One result folder of a run: where it is, what marks it finished, what it depends on."""

    what: str
    """How messages name it: ``stage 'tad'``, ``the fine-tuned teacher``, ``the pruned start``."""
    folder: Path
    marker: str
    inputs: dict[str, Any]
    fix: str = ""
    """What to delete besides this folder to start it again (``and the stage folders after it``)."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.inputs)

    def status(self) -> Status:
        """Finished, resumable or fresh; raises :class:`StaleError` for a folder made from other inputs."""
        finished = (self.folder / self.marker).is_file()
        interrupted = not finished and any((self.folder / CHECKPOINTS).glob("checkpoint-*"))
        if not (finished or interrupted):
            return Status.FRESH
        recorded = self.recorded()
        state = "finished" if finished else "interrupted (with checkpoints)"
        if recorded is None:
            raise StaleError(f"{self.what} in {self.folder} is {state} but has no {FINGERPRINT_FILE} (written before "
                             f"fingerprints were recorded), so its inputs cannot be checked; {self.remedy}")
        if recorded.get("fingerprint") != self.fingerprint:
            change = describe_change(recorded.get("inputs") or {}, self.inputs)
            raise StaleError(f"{self.what} in {self.folder} was {state} under other inputs ({change}); {self.remedy}")
        return Status.FINISHED if finished else Status.RESUME

    @property
    def remedy(self) -> str:
        return f"use a new --output-dir, or delete {self.folder}{self.fix}"

    def recorded(self) -> dict[str, Any] | None:
        path = self.folder / FINGERPRINT_FILE
        return read_json(path) if path.is_file() else None

    def record(self, folder: str | os.PathLike | None = None) -> None:
        """Write ``fingerprint.json`` (atomically) before the work starts: a killed run is checked against it.
        ``folder``: where the result is being built, when not in place (a temp folder renamed when done)."""
        write_json_atomic(Path(folder or self.folder) / FINGERPRINT_FILE,
                          {"fingerprint": self.fingerprint, "inputs": self.inputs})


# --------------------------------------------------------------------------- the run folder's layout

TEACHER_DIR, PRUNED_DIR, FINAL_DIR = "teacher", "pruned", "final"
TEACHER_MARKER, PRUNE_MARKER, STAGE_MARKER = "dev_metrics.json", "prune.json", "stage.json"
LATER = " and the stage folders after it"
AFTER_TEACHER = " and the result folders made from it (pruned/, the stages)"


def teacher_result(pretrained: str, task, finetune, seed: int, folder: str | os.PathLike, fix: str = "") -> Result:
    """The teacher ``compressor.finetune`` makes in ``folder`` (its ``dev_metrics.json`` is written last)."""
    return Result("the fine-tuned teacher", Path(folder), TEACHER_MARKER, finetune_inputs(pretrained, task, finetune, seed),
                  fix)


@dataclass(frozen=True)
class RunPlan:
    """Every result folder of a recipe's run, in the order they are made."""

    teacher: Result | None
    """``teacher/``, when the recipe fine-tunes its teacher here (``teacher.finetuned: null``)."""
    pruned: Result | None
    """``pruned/``, when ``student.init: pruned``: the root of the stages' chain."""
    stages: list[Result]

    def check(self) -> dict[str, Status]:
        """Each folder's status, checked before any work: the first stale one raises :class:`StaleError`."""
        results = [r for r in (self.teacher, self.pruned, *self.stages) if r is not None]
        return {r.what: r.status() for r in results}


def plan_run(recipe, out: str | os.PathLike) -> RunPlan:
    """The run's result folders under ``out`` with their inputs (nothing is read but the inputs' files)."""
    out = Path(out)
    t = recipe.teacher
    teacher = (teacher_result(t.pretrained, recipe.task, t.finetune, recipe.seed, out / TEACHER_DIR, AFTER_TEACHER)
               if t.finetuned is None else None)
    pruned = (Result("the pruned start", out / PRUNED_DIR, PRUNE_MARKER, run_inputs(recipe), LATER)
              if recipe.student.init == "pruned" else None)
    stages = [Result(f"stage {s.name!r}", out / s.name, STAGE_MARKER, stage_inputs(recipe, i), LATER)
              for i, s in enumerate(recipe.stages)]
    return RunPlan(teacher, pruned, stages)
