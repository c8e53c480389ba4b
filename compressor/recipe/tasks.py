"""GLUE tasks by name: where their TSVs live, which columns hold text and label, and their metric."""
from __future__ import annotations

from dataclasses import dataclass

from ernie_common.tables import HEADERLESS


@dataclass(frozen=True)
class Task:
    name: str
    glue_folder: str
    """Folder under a GLUE directory (``SST-2``) as written by GLUE's download script."""
    text_columns: tuple[str, ...]
    """Columns in the local TSV: one (sentences) or two (pairs)."""
    label_column: str
    labels: tuple[str, ...]
    """Class names in id order; empty for regression."""
    metric: str
    """The main dev metric: accuracy, matthews_correlation or pearson."""
    dev_file: str = "dev.tsv"
    header: tuple[str, ...] | None = None
    """Column names for files without a header row (CoLA)."""
    tsv_label_values: tuple[str, ...] | None = None
    """Label strings in the TSV, in id order, where they are words rather than ids (MNLI, QNLI, RTE)."""
    hub_text_columns: tuple[str, ...] | None = None
    """Column names on the hub's ``nyu-mll/glue`` copy, where they differ from the TSV's."""

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2


GLUE_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("sst2", "SST-2", ("sentence",), "label", ("negative", "positive"), "accuracy"),
        Task("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent"), "accuracy",
             hub_text_columns=("sentence1", "sentence2")),
        Task("cola", "CoLA", ("sentence",), "label", ("unacceptable", "acceptable"), "matthews_correlation",
             header=HEADERLESS["CoLA"]),
        Task("stsb", "STS-B", ("sentence1", "sentence2"), "score", (), "pearson"),
        Task("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("not_duplicate", "duplicate"), "accuracy"),
        Task("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
             "accuracy", dev_file="dev_matched.tsv", tsv_label_values=("entailment", "neutral", "contradiction"),
             hub_text_columns=("premise", "hypothesis")),
        Task("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), "accuracy",
             tsv_label_values=("entailment", "not_entailment")),
        Task("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), "accuracy",
             tsv_label_values=("entailment", "not_entailment")),
        Task("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("not_entailment", "entailment"), "accuracy"),
    )
}


def label_maps(task: Task) -> dict:
    """Config kwargs (for ``from_pretrained`` or a config class) that give a classifier the task's labels
    (regression: one output), its task name (HF's ``finetuning_task``) and its input kind, single text or
    pair, as ``task_specific_params["text-classification"]["input_kind"]``: ``runtime`` reads it to refuse
    the wrong request shape. Only attributes every HF config has, so ``from_pretrained`` accepts them all."""
    kind = {"task_specific_params": {"text-classification": {"input_kind": "pair" if task.is_pair else "single"}},
            "finetuning_task": task.name}
    if task.is_regression:
        return {"num_labels": 1, "problem_type": "regression", **kind}
    return {"num_labels": task.num_labels, "id2label": dict(enumerate(task.labels)),
            "label2id": {name: i for i, name in enumerate(task.labels)}, **kind}
