"""Teacher fine-tuning: a real HF classifier with the task's labels, dev metrics, reuse of a finished run."""
from __future__ import annotations

import json
import subprocess
import sys

from transformers import AutoModelForSequenceClassification

from compressor.config import FinetuneConfig, TaskConfig
from compressor.finetune import finetune_teacher


def test_finetune_writes_a_labelled_classifier_and_is_reused(tmp_path, tiny_bert_dir, glue_dir):
    task = TaskConfig(name="cola", glue_dir=str(glue_dir), max_train_samples=64, max_eval_samples=64)
    ft = FinetuneConfig(epochs=1, batch_size=16, max_seq_length=32, learning_rate=1e-3)
    path, metrics = finetune_teacher(str(tiny_bert_dir), task, ft, tmp_path / "teacher", report_to=[])
    assert set(metrics) >= {"matthews_correlation", "accuracy"}
    model = AutoModelForSequenceClassification.from_pretrained(path)
    assert model.config.id2label == {0: "unacceptable", 1: "acceptable"}
    assert json.loads((tmp_path / "teacher" / "dev_metrics.json").read_text()) == metrics
    assert not (tmp_path / "teacher" / "checkpoints").exists()
    mtime = (tmp_path / "teacher" / "model.safetensors").stat().st_mtime
    assert finetune_teacher(str(tiny_bert_dir), task, ft, tmp_path / "teacher")[1] == metrics
    assert (tmp_path / "teacher" / "model.safetensors").stat().st_mtime == mtime


def test_finetune_cli_bad_input_is_one_line(tmp_path, tiny_bert_dir):
    out = subprocess.run([sys.executable, "-m", "compressor.finetune", "--model", str(tiny_bert_dir), "--task", "sst2",
                          "--glue-dir", str(tmp_path / "no_glue"), "--output-dir", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "train.tsv" in out.stderr
