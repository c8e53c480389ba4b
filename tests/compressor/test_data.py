"""Task data from the real GLUE TSVs and user files; the streamed, packed general corpus."""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer

from compressor.data import DataError
from compressor.data.corpus import general_corpus, packed_path
from compressor.data.task_data import load_task_data, task_spec, tokenize_task
from compressor.modeling.metrics import compute_metrics
from compressor.recipe.schema import GeneralDataConfig, TaskConfig
from compressor.recipe.tasks import GLUE_TASKS


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


def _write_corpus(path, paragraphs: int = 400):
    text = [f"paragraph number {i} talks about topic {i * 7} and nothing else." for i in range(paragraphs)]
    with gzip.open(path, "wt") as f:
        f.write("\n\n".join(text))
    return text


def _check_blocks(ds, tokenizer, size):
    for ids in ds["input_ids"]:
        assert len(ids) == size and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id


@pytest.mark.parametrize("num_proc, max_blocks", [(1, None), (2, None), (2, 30)])
def test_general_corpus_is_packed_once_in_parallel_and_read_from_disk_after(tmp_path, tokenizer, monkeypatch,
                                                                              num_proc, max_blocks):
    corpus = tmp_path / "c.txt.gz"
    text = " ".join(_write_corpus(corpus))
    cfg = GeneralDataConfig(files=[str(corpus)], cache_dir=str(tmp_path / "cache"), num_proc=num_proc, max_blocks=max_blocks)
    ds = general_corpus(cfg, tokenizer, 24)
    assert ds.column_names == ["input_ids"] and len(ds) == (max_blocks or len(ds)) and len(ds) >= 30
    _check_blocks(ds, tokenizer, 24)
    words = tokenizer.decode(ds[0]["input_ids"][1:-1]).split()
    assert " ".join(words[1:-1]) in text  # a contiguous stretch of the corpus (block edges may split words)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [packed_path(cfg, tokenizer, 24).name]  # no temp left

    def no_rebuild(*_a, **_k):
        raise AssertionError("the corpus was read and tokenised again")

    monkeypatch.setattr(datasets, "load_dataset", no_rebuild)
    assert general_corpus(cfg, tokenizer, 24)["input_ids"] == ds["input_ids"]
    assert packed_path(cfg, tokenizer, 32) != packed_path(cfg, tokenizer, 24)  # another block size: another build


def test_a_changed_corpus_file_is_packed_again(tmp_path, tokenizer):
    corpus = tmp_path / "c.txt"
    corpus.write_text("one two three four five six seven eight nine ten eleven twelve\n" * 20)
    cfg = GeneralDataConfig(files=[str(corpus)], cache_dir=str(tmp_path / "cache"), num_proc=1)
    before = packed_path(cfg, tokenizer, 16)
    general_corpus(cfg, tokenizer, 16)
    corpus.write_text("a different text altogether, longer than before\n" * 40)
    assert packed_path(cfg, tokenizer, 16) != before
    assert tokenizer.decode(general_corpus(cfg, tokenizer, 16)[0]["input_ids"]).startswith("[CLS] a different")


def _fake_hub(rows_per_shard: int = 300, shards: int = 2):
    """A streamed hub dataset as ``datasets.load_dataset(..., streaming=True)`` returns one: shards, extra columns."""
    def gen(shard_ids):
        for s in shard_ids:
            for i in range(rows_per_shard):
                yield {"id": f"{s}-{i}", "title": "t", "body": f"shard {s} article {i} says something about the world."}

    return datasets.IterableDataset.from_generator(gen, gen_kwargs={"shard_ids": list(range(shards))})


def test_hub_corpus_is_streamed_from_the_named_dataset_and_column(tmp_path, tokenizer, monkeypatch):
    calls = []

    def load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return _fake_hub()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = GeneralDataConfig(dataset="wikimedia/wikipedia", dataset_config="20231101.en", text_column="body",
                            max_blocks=40, num_proc=2, cache_dir=str(tmp_path))
    ds = general_corpus(cfg, tokenizer, 16)
    assert len(ds) == 40
    _check_blocks(ds, tokenizer, 16)
    assert {c[:2] for c in calls} == {("wikimedia/wikipedia", "20231101.en")}
    assert all(c[2] == {"split": "train", "streaming": True} for c in calls)
    decoded = " ".join(tokenizer.decode(ids) for ids in ds["input_ids"])
    assert "shard 0 article" in decoded and "shard 1 article" in decoded  # both shards, one process each

    cfg.text_column = "text"
    with pytest.raises(DataError, match=r"no column 'text' \(columns: id, title, body\); set general.text_column"):
        general_corpus(cfg, tokenizer, 32)


def test_unreachable_hub_is_one_line_and_leaves_nothing(tmp_path, tokenizer, monkeypatch):
    def offline(*_a, **_k):
        raise ConnectionError("Couldn't reach 'wikimedia/wikipedia' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    cfg = GeneralDataConfig(dataset="wikimedia/wikipedia", dataset_config="20231101.en", cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError) as err:
        general_corpus(cfg, tokenizer, 32)
    assert "\n" not in str(err.value) and "Couldn't reach" in str(err.value) and "go online" in str(err.value)
    assert list((tmp_path / "c").iterdir()) == []


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


def test_packing_ahead_of_a_torchrun_job_from_the_command_line(tmp_path, capsys, tiny_bert_dir, tiny_recipe, write_recipe):
    from compressor.data.__main__ import main

    config = write_recipe(tmp_path, tiny_recipe(tiny_bert_dir))
    assert main(["--config", str(config), "--general.max_blocks", "50"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("50 blocks of 32 tokens: ") and Path(out.split(": ")[1]).is_dir()
    assert main(["--config", str(config), "--general.files", "[/no/such.txt]"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: general corpus file /no/such.txt does not exist")
