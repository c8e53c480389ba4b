"""Augmented task data: the transfer set (real corpus), MLM word replacement (tiny MLM built here), caching,
and the promise that augmented rows never carry a gold label."""
from __future__ import annotations

import math

import datasets
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, DataCollatorWithPadding

from compressor.data import DataError, augment
from compressor.data.task_data import load_task_data
from compressor.modeling.losses import NO_LABEL, hard_label_ce
from compressor.recipe.schema import (
    AugmentConfig,
    ConfigError,
    GeneralDataConfig,
    MLMConfig,
    TaskConfig,
    TransferConfig,
    load_recipe,
)
from compressor.recipe.tasks import GLUE_TASKS


@pytest.fixture(scope="module")
def sst2_train(glue_dir):
    return load_task_data(TaskConfig(name="sst2", glue_dir=str(glue_dir), max_train_samples=40))["train"]


@pytest.fixture(scope="module")
def tiny_mlm_dir(tmp_path_factory, tiny_bert_dir):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_mlm")
    BertForMaskedLM(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=64)).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(out)
    return out


def test_sentences_are_split_at_sentence_ends():
    assert augment.split_sentences("It rained. Then it stopped! Did it? 3 more came.") == [
        "It rained.", "Then it stopped!", "Did it?", "3 more came."]


def test_transfer_set_from_the_corpus_is_seeded_bounded_and_unlabelled(tmp_path, corpus_file, sst2_train):
    cfg = AugmentConfig(transfer=TransferConfig(max_examples=300, min_words=4, max_words=30))
    first = augment.build(cfg, sst2_train, GLUE_TASKS["sst2"], GeneralDataConfig(files=[str(corpus_file)]), seed=7, cache_dir=tmp_path / "a")
    again = augment.build(cfg, sst2_train, GLUE_TASKS["sst2"], GeneralDataConfig(files=[str(corpus_file)]), seed=7, cache_dir=tmp_path / "b")
    other = augment.build(cfg, sst2_train, GLUE_TASKS["sst2"], GeneralDataConfig(files=[str(corpus_file)]), seed=8, cache_dir=tmp_path / "c")
    assert len(first) == 300 and augment.sizes(first) == {"transfer": 300}
    assert first["text_a"] == again["text_a"] and first["text_a"] != other["text_a"]
    assert set(first["label"]) == {NO_LABEL}
    assert all(4 <= len(t.split()) <= 30 for t in first["text_a"])
    assert not set(first["text_a"]) & set(sst2_train["text_a"])


def test_augmentation_is_cached_and_not_regenerated(tmp_path, corpus_file, sst2_train, monkeypatch):
    cfg = AugmentConfig(transfer=TransferConfig(max_examples=50))
    first = augment.build(cfg, sst2_train, GLUE_TASKS["sst2"], GeneralDataConfig(files=[str(corpus_file)]), seed=1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("augment-*"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(augment, "transfer_set", fail)
    again = augment.build(cfg, sst2_train, GLUE_TASKS["sst2"], GeneralDataConfig(files=[str(corpus_file)]), seed=1, cache_dir=tmp_path)
    assert again["text_a"] == first["text_a"]
    with pytest.raises(AssertionError, match="regenerated"):  # another seed is another set
        augment.build(cfg, sst2_train, GLUE_TASKS["sst2"], GeneralDataConfig(files=[str(corpus_file)]), seed=2, cache_dir=tmp_path)


def test_pair_tasks_get_neighbouring_sentence_pairs(tmp_path, corpus_file, glue_dir):
    mrpc = load_task_data(TaskConfig(name="mrpc", glue_dir=str(glue_dir), max_train_samples=20))["train"]
    rows = augment.build(AugmentConfig(transfer=TransferConfig(max_examples=40)), mrpc, GLUE_TASKS["mrpc"],
                         GeneralDataConfig(files=[str(corpus_file)]), seed=0, cache_dir=tmp_path)
    assert rows.column_names == ["text_a", "text_b", "label", "source"] and len(rows) == 40
    assert all(a != b for a, b in zip(rows["text_a"], rows["text_b"]))


def test_a_transfer_file_contributes_only_its_named_column(tmp_path, glue_dir, sst2_train):
    """A labelled TSV as transfer file: its label column is never read, every row gets NO_LABEL."""
    tsv = glue_dir / "SST-2" / "dev.tsv"
    cfg = AugmentConfig(transfer=TransferConfig(source="files", files=[str(tsv)], column="sentence", max_examples=100))
    rows = augment.build(cfg, sst2_train, GLUE_TASKS["sst2"], GeneralDataConfig(), seed=0, cache_dir=tmp_path)
    assert len(rows) == 100 and set(rows["label"]) == {NO_LABEL}
    bad = AugmentConfig(transfer=TransferConfig(source="files", files=[str(tsv)], column="text", max_examples=10))
    with pytest.raises(DataError, match="augment.transfer.column 'text' is not in .* fix augment.transfer.column"):
        augment.build(bad, sst2_train, GLUE_TASKS["sst2"], GeneralDataConfig(), seed=0, cache_dir=tmp_path / "bad")


def test_regression_rows_get_nan_and_the_hard_loss_skips_them(tmp_path, corpus_file, glue_dir):
    stsb = load_task_data(TaskConfig(name="stsb", glue_dir=str(glue_dir), max_train_samples=10))["train"]
    rows = augment.build(AugmentConfig(transfer=TransferConfig(max_examples=10)), stsb, GLUE_TASKS["stsb"],
                         GeneralDataConfig(files=[str(corpus_file)]), seed=0, cache_dir=tmp_path)
    assert all(math.isnan(v) for v in rows["label"])


def test_hard_label_loss_counts_only_labelled_rows():
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [5.0, -5.0]])
    labels = torch.tensor([1, NO_LABEL, NO_LABEL])
    expected = torch.nn.functional.cross_entropy(logits[:1], labels[:1])
    assert hard_label_ce(logits, labels) == pytest.approx(float(expected))
    assert hard_label_ce(logits, torch.full((3,), NO_LABEL)) == 0.0


def test_mlm_word_replacement_is_deterministic_and_keeps_multi_piece_words(tmp_path, tiny_mlm_dir, sst2_train):
    cfg = AugmentConfig(mlm=MLMConfig(model=str(tiny_mlm_dir), copies=3, p=0.5, top_k=5, max_examples=8))
    first = augment.build(cfg, sst2_train, GLUE_TASKS["sst2"], GeneralDataConfig(), seed=3, cache_dir=tmp_path / "a")
    again = augment.build(cfg, sst2_train, GLUE_TASKS["sst2"], GeneralDataConfig(), seed=3, cache_dir=tmp_path / "b")
    assert len(first) == 3 * 8 and augment.sizes(first) == {"mlm": 24}
    assert first["text_a"] == again["text_a"] and set(first["label"]) == {NO_LABEL}
    originals = sst2_train["text_a"][:8]
    changed = 0
    for i, text in enumerate(first["text_a"]):
        source = originals[i % 8].split()
        words = text.split()
        assert len(words) == len(source)  # word for word
        changed += sum(a != b for a, b in zip(words, source))
    assert changed > 0


def test_an_mlm_that_cannot_be_loaded_is_one_line_naming_the_key(tmp_path, tiny_bert_dir, sst2_train):
    cfg = AugmentConfig(mlm=MLMConfig(model=str(tmp_path), copies=1))  # a folder with no model in it
    with pytest.raises(DataError, match=r"augment.mlm.model .* cannot be loaded .* set augment.mlm.model"):
        augment.build(cfg, sst2_train, GLUE_TASKS["sst2"], GeneralDataConfig(), seed=0, cache_dir=tmp_path / "out")


@pytest.mark.parametrize("change, message", [
    ({"augment": {"transfer": {"bogus": 1}}}, "unknown key 'augment.transfer.bogus'"),
    ({"augment": {"transfer": {"source": "web"}}}, "augment.transfer.source must be one of general, files"),
    ({"augment": {"transfer": {"source": "files"}}}, "augment.transfer.files is empty"),
    ({"augment": {"mlm": {"copies": 2}}}, "augment.mlm.model is empty"),
    ({"augment": {"mlm": {"model": "/no/such/mlm"}}}, "augment.mlm.model: /no/such/mlm is not a Hugging Face model"),
    ({"stages.tsd.augment": True}, "augment: true but the recipe has no augment.transfer"),
    ({"stages.gd.augment": True, "augment": {"transfer": {}}}, "augment: true needs task data"),
    ({"student.init": "pruned", "student.prune_from": "scratch"}, "student.prune_from must be one of"),
    ({"student.init": "pruned", "student.prune": {"layers": "best"}}, "student.prune.layers must be one of"),
    ({"student.init": "pruned", "student.prune": {"samples": 0}}, "student.prune.samples must be at least 1"),
    ({"student.init": "pruned", "student.prune": {"calib": "task"}}, "unknown key 'student.prune.calib'"),
])
def test_bad_augment_and_prune_keys_are_one_line_config_errors(tmp_path, tiny_recipe, write_recipe, tiny_bert_dir,
                                                                change, message):
    path = write_recipe(tmp_path, tiny_recipe(tiny_bert_dir))
    with pytest.raises(ConfigError) as err:
        load_recipe(path, {k: v for k, v in change.items()})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_collated_mixed_batches_keep_no_label_rows(sst2_train, tiny_bert_dir, corpus_file, tmp_path):
    """Task rows and augmented rows concatenate into one dataset whose batches carry NO_LABEL for augmented rows."""
    from compressor.data.task_data import tokenize_task

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    extra = augment.build(AugmentConfig(transfer=TransferConfig(max_examples=8)), sst2_train, GLUE_TASKS["sst2"],
                          GeneralDataConfig(files=[str(corpus_file)]), seed=0, cache_dir=tmp_path)
    task_rows = tokenize_task(datasets.DatasetDict(train=sst2_train), tokenizer, 32)["train"]
    extra_rows = tokenize_task(datasets.DatasetDict(train=extra.remove_columns("source")), tokenizer, 32)["train"]
    mixed = datasets.concatenate_datasets([task_rows, extra_rows.cast(task_rows.features)])
    batch = DataCollatorWithPadding(tokenizer)([mixed[i] for i in (0, 1, 40, 41)])
    assert batch["labels"].tolist()[2:] == [NO_LABEL, NO_LABEL] and min(batch["labels"].tolist()[:2]) >= 0
