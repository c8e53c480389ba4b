"""Dev metrics per task (scikit-learn / scipy), for the Trainer and for any HF classifier."""
from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, EvalPrediction

from compressor.recipe.tasks import Task


def compute_metrics(task: Task, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``task.metric`` is always present; binary tasks add F1, regression adds Spearman, CoLA adds accuracy."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if task.is_regression:
        preds = logits.reshape(-1).astype(np.float64)
        return {"pearson": float(pearsonr(preds, labels)[0]), "spearmanr": float(spearmanr(preds, labels)[0])}
    preds = logits.argmax(-1)
    out = {"accuracy": float(accuracy_score(labels, preds))}
    if task.metric == "matthews_correlation":
        out["matthews_correlation"] = float(matthews_corrcoef(labels, preds))
    if task.num_labels == 2:
        out["f1"] = float(f1_score(labels, preds, zero_division=0))
    return out


def trainer_metrics(task: Task) -> Callable[[EvalPrediction], dict[str, float]]:
    """``Trainer(compute_metrics=...)`` adaptor."""

    def fn(pred: EvalPrediction) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return compute_metrics(task, logits, pred.label_ids)

    return fn


@torch.no_grad()
def predict_logits(model, dataset, tokenizer, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of a tokenised dataset (dynamic padding), on the model's own device."""
    model.eval()
    device = next(model.parameters()).device
    accepted = {*inspect.signature(model.forward).parameters, "labels"}  # e.g. MPNet takes no token_type_ids
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels")
               if c in dataset.column_names and c in accepted]
    loader = DataLoader(dataset.select_columns(columns), batch_size=batch_size,
                        collate_fn=DataCollatorWithPadding(tokenizer))
    logits, labels = [], []
    for batch in loader:
        labels.append(batch.pop("labels").numpy())
        out = model(**{k: v.to(device) for k, v in batch.items()})
        logits.append(out.logits.float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(labels)


def evaluate(model, dataset, tokenizer, task: Task, batch_size: int = 64) -> dict[str, float]:
    """Dev metrics of any HF sequence-classification model on a tokenised split (see data.tokenize_task)."""
    return compute_metrics(task, *predict_logits(model, dataset, tokenizer, batch_size))
