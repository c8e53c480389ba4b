"""Builders for the runtime tests' models (also used by the measurement script in the README)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ernie_common.tables import read_examples

LABELS = {0: "negative", 1: "positive"}


def read_sst2(path: Path, limit: int) -> tuple[list[str], np.ndarray]:
    examples = read_examples(path, "sentence", limit)
    return examples.texts, np.array([int(label) for label in examples.labels])


def fit_minilm_classifier(minilm_dir: Path, sst2_train: Path, out: Path, n_train: int = 256) -> Path:
    """The real MiniLM encoder with a sentiment head fitted (logistic regression on the pooled output of
    ``n_train`` real SST-2 training sentences), so label agreement is measured on a head with real margins."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_dir, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
        finetuning_task="sst2").eval()
    texts, labels = read_sst2(sst2_train, n_train)
    with torch.inference_mode():
        enc = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        pooled = model.bert(**enc).pooler_output.numpy()
    head = LogisticRegression(C=10.0, max_iter=1000).fit(pooled, labels)
    with torch.no_grad():
        w = torch.tensor(head.coef_[0], dtype=torch.float32)
        b = float(head.intercept_[0])
        model.classifier.weight.copy_(torch.stack([-w / 2, w / 2]))
        model.classifier.bias.copy_(torch.tensor([-b / 2, b / 2]))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def student_shaped(out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """The ERNIE-Tiny student's shape (4 layers, hidden 312, FFN 1200, 12 heads of 26), random weights."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=312, num_hidden_layers=4, num_attention_heads=12,
                        intermediate_size=1200, num_labels=2, id2label=LABELS,
                        label2id={v: k for k, v in LABELS.items()})
    BertForSequenceClassification(config).eval().save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out
