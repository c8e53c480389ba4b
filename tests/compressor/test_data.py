"""Task data from the real GLUE TSVs and user files; the streamed, packed general corpus."""
from __future__ import annotations

import gzip
import json
from collections import Counter

import numpy as np
import pytest
from transformers import AutoTokenizer

from compressor.config import TaskConfig
from compressor.data import DataError, general_blocks, load_task_data, task_spec, tokenize_task
from compressor.metrics import compute_metrics
from compressor.tasks import GLUE_TASKS


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


def test_sst2_dev_is_complete_with_glue_label_counts(glue_dir):
    dsd = load_task_data(TaskConfig(name="sst2", glue_dir=str(glue_dir), max_train_samples=50))
    assert dsd["validation"].column_names == ["text_a", "label"]
    assert len(dsd["train"]) == 50
    assert Counter(dsd["validation"]["label"]) == {0: 428, 1: 444}


@pytest.mark.parametrize("name, pair, rows, dtype", [
    ("mrpc", True, 408, "int64"),      # UTF-8 BOM before the header
    ("cola", False, 1043, "int64"),    # no header row
    ("stsb", True, 1500, "float32"),   # regression
])
def test_glue_quirks(glue_dir, name, pair, rows, dtype):
    dsd = load_task_data(TaskConfig(name=name, glue_dir=str(glue_dir), max_train_samples=20))
    dev = dsd["validation"]
    assert dev.column_names == (["text_a", "text_b", "label"] if pair else ["text_a", "label"])
    assert len(dev) == rows
    assert dev.features["label"].dtype == dtype
    if name == "stsb":
        assert 0.0 <= min(dev["label"]) and max(dev["label"]) <= 5.0
    else:
        assert set(dev["label"]) == {0, 1}
    assert all(t.strip() for t in dev["text_a"])


def test_tokenize_pairs_uses_segment_ids_and_truncates(glue_dir, tokenizer):
    dsd = load_task_data(TaskConfig(name="mrpc", glue_dir=str(glue_dir), max_train_samples=8, max_eval_samples=8))
    tok = tokenize_task(dsd, tokenizer, max_seq_length=32)
    row = tok["train"][0]
    assert set(tok["train"].column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert len(row["input_ids"]) <= 32 and row["input_ids"].count(tokenizer.sep_token_id) == 2
    assert set(row["token_type_ids"]) == {0, 1}


def test_custom_csv_and_json_with_column_mapping(tmp_path):
    (tmp_path / "train.csv").write_text('review,stars\n"great, really great",pos\nawful,neg\n"fine I guess",pos\n')
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in [{"review": "bad", "stars": "neg"}, {"review": "good", "stars": "pos"}]))
    cfg = TaskConfig(name="custom", train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "train.csv"),
                     text_columns=["review"], label_column="stars", num_labels=2)
    task = task_spec(cfg)
    assert task.labels == ("neg", "pos")
    dsd = load_task_data(cfg)
    assert dsd["train"]["text_a"][0] == "great, really great"
    assert dsd["train"]["label"] == [1, 0, 1]
    cfg.validation_file = str(tmp_path / "dev.jsonl")
    cfg.train_file = str(tmp_path / "dev.jsonl")
    assert load_task_data(cfg)["validation"]["label"] == [0, 1]


def test_wrong_column_and_missing_file_are_one_line(tmp_path, glue_dir):
    (tmp_path / "t.csv").write_text("text,label\nhello,1\n")
    cfg = TaskConfig(name="custom", train_file=str(tmp_path / "t.csv"), validation_file=str(tmp_path / "t.csv"),
                     text_columns=["sentence"], num_labels=2)
    with pytest.raises(DataError, match="column 'sentence' not found .* set task.text_columns"):
        load_task_data(cfg)
    cfg.train_file = str(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="does not exist"):
        load_task_data(cfg)
    with pytest.raises(DataError, match="QQP/ folder"):
        load_task_data(TaskConfig(name="qqp", glue_dir=str(glue_dir)))


def test_general_corpus_streams_into_packed_blocks(tmp_path, tokenizer):
    corpus = tmp_path / "c.txt.gz"
    paragraphs = [f"paragraph number {i} talks about topic {i * 7} and nothing else." for i in range(200)]
    with gzip.open(corpus, "wt") as f:
        f.write("\n\n".join(paragraphs))
    blocks = list(general_blocks([str(corpus)], tokenizer, block_size=24, max_blocks=30, seed=1))
    assert len(blocks) == 30
    for b in blocks:
        assert len(b["input_ids"]) == 24 and sum(b["attention_mask"]) == 24
        assert b["input_ids"][0] == tokenizer.cls_token_id and b["input_ids"][-1] == tokenizer.sep_token_id
    text = " ".join(paragraphs)
    words = tokenizer.decode(blocks[0]["input_ids"][1:-1]).split()
    assert " ".join(words[1:-1]) in text  # a contiguous stretch of the corpus (block edges may split words)


def test_real_corpus_streams_without_loading_it(corpus_file, tokenizer):
    it = iter(general_blocks([str(corpus_file)], tokenizer, block_size=128, seed=0))
    first = [next(it) for _ in range(5)]
    assert all(len(b["input_ids"]) == 128 for b in first)


def test_metrics_against_hand_values():
    cola = GLUE_TASKS["cola"]
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # preds 1 0 1 1
    labels = np.array([1, 0, 0, 1])
    m = compute_metrics(cola, logits, labels)
    # TP=2 TN=1 FP=1 FN=0: MCC = (2*1 - 1*0) / sqrt(3*2*1*2) = 2/sqrt(12)
    assert m["matthews_correlation"] == pytest.approx(2 / 12 ** 0.5)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.8)  # precision 2/3, recall 1
    stsb = compute_metrics(GLUE_TASKS["stsb"], np.array([[1.0], [2.0], [3.0]]), np.array([2.0, 4.0, 6.0]))
    assert stsb["pearson"] == pytest.approx(1.0) and stsb["spearmanr"] == pytest.approx(1.0)
