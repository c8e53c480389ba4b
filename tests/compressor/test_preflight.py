"""Preflight: teachers that disagree with each other or with the student are one line before any work.

The models here are config-only directories (a ``config.json``, a tokenizer where one matters): preflight reads
configs and tokenizers, never weights, and a refused run leaves nothing behind.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer, BertConfig, BertTokenizerFast, DistilBertConfig

from compressor.distill import main, run
from compressor.recipe.schema import load_recipe
from compressor.run import DistillError
from compressor.run.preflight import preflight

SST2_LABELS = {"num_labels": 2, "id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}


def _model_dir(path: Path, config, tokenizer=None) -> Path:
    config.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def _bert(**kw) -> BertConfig:
    return BertConfig(**{"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "intermediate_size": 64, **kw})


@pytest.fixture
def recipe_with(tmp_path, tiny_recipe, write_recipe, tiny_bert_dir):
    """``recipe_with(pretrained=..., finetuned=..., stages=[...], student={...})`` -> a loaded recipe."""

    def make(pretrained: Path = tiny_bert_dir, finetuned: Path | None = tiny_bert_dir, stages: list[str] | None = None,
             **sections):
        data = tiny_recipe(pretrained, finetuned=finetuned)
        if stages is not None:
            data["stages"] = [s for s in data["stages"] if s["name"] in stages]
        for key, value in sections.items():
            data[key] = {**data[key], **value}
        return load_recipe(write_recipe(tmp_path, data))

    return make


def _refused(recipe, tmp_path) -> str:
    out = tmp_path / "out"
    with pytest.raises(DistillError) as err:
        run(recipe, out)
    assert "\n" not in str(err.value)
    assert not out.exists()  # refused before any work
    return str(err.value)


def test_a_pretrained_and_a_finetuned_teacher_with_other_vocabularies_are_refused(recipe_with, tmp_path, tiny_bert_dir):
    """A BERT pretrained teacher and an MPNet-size fine-tuned one: GD would feed BERT the fine-tuned tokenizer's ids."""
    finetuned = _model_dir(tmp_path / "ft", _bert(vocab_size=30527, **SST2_LABELS))
    message = _refused(recipe_with(finetuned=finetuned), tmp_path)
    assert "different tokenizers (bert vocabulary 30522 vs bert 30527)" in message
    assert "stage 'gd' would feed the pretrained teacher another model's token ids" in message


def test_same_size_vocabularies_with_other_tokens_are_refused(recipe_with, tmp_path, tiny_bert_dir):
    vocab = (tiny_bert_dir / "vocab.txt").read_text().splitlines()
    vocab[2000], vocab[2001] = vocab[2001], vocab[2000]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    finetuned = _model_dir(tmp_path / "ft", _bert(**SST2_LABELS), BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")))
    assert "same size, 2 tokens with other ids" in _refused(recipe_with(finetuned=finetuned), tmp_path)


def test_an_unused_pretrained_teacher_is_not_compared(recipe_with, tmp_path):
    """With a fine-tuned teacher given and no stage on the pretrained one, its vocabulary does not matter."""
    finetuned = _model_dir(tmp_path / "ft", _bert(vocab_size=30527, **SST2_LABELS))
    preflight(recipe_with(finetuned=finetuned, stages=["tad", "tsd"]))


def test_a_pruned_student_from_a_class_the_pruner_does_not_support_is_refused(recipe_with, tmp_path):
    finetuned = _model_dir(tmp_path / "ft", DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **SST2_LABELS))
    recipe = recipe_with(finetuned=finetuned, stages=["tad", "tsd"], student={"init": "pruned", "num_hidden_layers": 1})
    assert "teachers, not 'distilbert'; use student.init: random" in _refused(recipe, tmp_path)


def test_a_pruned_student_larger_than_its_teacher_is_refused(recipe_with, tmp_path):
    recipe = recipe_with(stages=["tad", "tsd"], student={"init": "pruned", "hidden_size": 64, "num_hidden_layers": 1})
    assert "student.hidden_size 64 exceeds the teacher's 32" in _refused(recipe, tmp_path)


def test_a_checkpoint_student_with_another_vocabulary_is_refused(recipe_with, tmp_path):
    checkpoint = _model_dir(tmp_path / "student", _bert(vocab_size=1000, **SST2_LABELS))
    recipe = recipe_with(stages=["tsd"], student={"init": "checkpoint", "checkpoint": str(checkpoint)})
    assert "has vocabulary 1000 but the teacher's is 30522, and no tokenizer beside it" in _refused(recipe, tmp_path)


def test_a_checkpoint_student_whose_tokenizer_shares_few_tokens_with_the_teachers_is_refused(recipe_with, tmp_path):
    """A checkpoint made for another tokenizer is re-indexed by token string, unless the two split text otherwise."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"zz{i}" for i in range(400))]) + "\n")
    checkpoint = _model_dir(tmp_path / "student", _bert(vocab_size=405, **SST2_LABELS),
                            BertTokenizerFast(vocab_file=str(vocab)))
    recipe = recipe_with(stages=["tsd"], student={"init": "checkpoint", "checkpoint": str(checkpoint)})
    assert "knows only 5 of the teacher's 30,522 tokens by string" in _refused(recipe, tmp_path)


def test_attention_heads_are_checked_against_each_stages_own_teacher(recipe_with, tmp_path, tiny_bert_dir):
    """GD distils the pretrained teacher's attention maps: its head count must fit the student's, whatever the
    fine-tuned teacher's is."""
    pretrained = _model_dir(tmp_path / "pre", _bert(num_attention_heads=8, hidden_size=48),
                            AutoTokenizer.from_pretrained(tiny_bert_dir))
    recipe = recipe_with(pretrained=pretrained, student={"num_attention_heads": 3})
    assert "stage 'gd': attention loss: student heads 3 and pretrained teacher heads 8" in _refused(recipe, tmp_path)


def test_the_cli_prints_the_refusal_as_one_line(tmp_path, capsys, tiny_recipe, write_recipe, tiny_bert_dir):
    finetuned = _model_dir(tmp_path / "ft", _bert(vocab_size=30527, **SST2_LABELS))
    config = write_recipe(tmp_path, tiny_recipe(tiny_bert_dir, finetuned=finetuned))
    assert main(["--config", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: teacher.pretrained") and "\n" not in err
    assert not (tmp_path / "out").exists()
    shutil.rmtree(finetuned)
