"""Student construction, initialisers, layer mapping and projections (tiny random BERT as teacher)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from compressor.modeling import StudentError
from compressor.modeling.student import (
    PROJECTIONS_FILE,
    build_student,
    labels_match,
    layer_map,
    make_projections,
    projections_for,
)
from compressor.recipe.schema import StudentConfig
from compressor.recipe.tasks import GLUE_TASKS


@pytest.mark.parametrize("m, n, expected", [(4, 12, [3, 6, 9, 12]), (4, 6, [2, 3, 5, 6]), (4, 2, [1, 1, 2, 2]),
                                            (1, 6, [6]), (3, 3, [1, 2, 3])])
def test_layer_map_is_uniform_and_ends_on_the_last_layer(m, n, expected):
    assert layer_map(m, n) == expected


@pytest.fixture(scope="module")
def teacher(tiny_bert_dir):
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)


def test_random_student_has_ernie_tiny_shape_teacher_vocab_and_task_labels(teacher):
    student = build_student(StudentConfig(), teacher, GLUE_TASKS["mrpc"])
    assert isinstance(student, BertForSequenceClassification)
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads) == (4, 312, 1200, 12)
    assert c.vocab_size == teacher.config.vocab_size == 30522
    assert c.id2label == {0: "not_equivalent", 1: "equivalent"}
    assert c.attention_probs_dropout_prob == 0.0
    regression = build_student(StudentConfig(hidden_size=24, intermediate_size=48, num_attention_heads=4), teacher,
                               GLUE_TASKS["stsb"])
    assert regression.config.num_labels == 1 and regression.config.problem_type == "regression"


def test_teacher_layers_init_copies_embeddings_and_mapped_layers(teacher):
    cfg = StudentConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                        init="teacher_layers")
    student = build_student(cfg, teacher, GLUE_TASKS["sst2"])
    src, dst = teacher.bert, student.bert
    assert torch.equal(dst.embeddings.word_embeddings.weight, src.embeddings.word_embeddings.weight)
    # one student layer maps to the teacher's last (2nd) layer
    for (name, a), (_, b) in zip(dst.encoder.layer[0].named_parameters(), src.encoder.layer[1].named_parameters()):
        assert torch.equal(a, b), name
    with pytest.raises(StudentError, match="init: random"):
        build_student(StudentConfig(init="teacher_layers"), teacher, GLUE_TASKS["sst2"])


def test_checkpoint_init_keeps_encoder_and_resets_head_for_other_labels(tmp_path, teacher):
    cfg = StudentConfig(hidden_size=24, intermediate_size=48, num_attention_heads=4)
    torch.manual_seed(1)
    sst2_student = build_student(cfg, teacher, GLUE_TASKS["sst2"])
    sst2_student.save_pretrained(tmp_path)
    same = build_student(StudentConfig(init="checkpoint", checkpoint=str(tmp_path)), teacher, GLUE_TASKS["sst2"])
    assert torch.equal(same.classifier.weight, sst2_student.classifier.weight)
    other = build_student(StudentConfig(init="checkpoint", checkpoint=str(tmp_path)), teacher, GLUE_TASKS["stsb"])
    assert torch.equal(other.bert.encoder.layer[3].output.dense.weight, sst2_student.bert.encoder.layer[3].output.dense.weight)
    assert other.config.num_labels == 1 and other.classifier.weight.shape == (1, 24)
    assert labels_match(sst2_student.config, GLUE_TASKS["sst2"]) and not labels_match(sst2_student.config, GLUE_TASKS["mrpc"])


def test_projections_shapes_identity_and_continuation(tmp_path, teacher):
    proj = make_projections(312, 384)
    assert set(proj) == {"hidden", "embedding"}
    assert proj["hidden"].weight.shape == (384, 312)
    assert proj["hidden"](torch.zeros(2, 5, 312)).shape == (2, 5, 384)
    assert all(isinstance(p, nn.Identity) for p in make_projections(32, 32).values())

    student = build_student(StudentConfig(hidden_size=24, intermediate_size=48, num_attention_heads=4), teacher,
                            GLUE_TASKS["sst2"])
    first = projections_for(student, teacher)
    torch.save(first.state_dict(), tmp_path / PROJECTIONS_FILE)
    again = projections_for(student, teacher, tmp_path)
    assert torch.equal(again["embedding"].weight, first["embedding"].weight)
    assert again["hidden"].weight.shape == (32, 24)


@pytest.fixture(scope="module")
def mpnet_style_tokenizer(tmp_path_factory, minilm_dir):
    """all-mpnet-base-v2's tokenizer layout built from MiniLM's WordPiece vocabulary: its four special tokens first,
    the same pieces shifted by four, ``<mask>`` last (30,527 tokens, as in the base teacher)."""
    from transformers import MPNetTokenizerFast

    pieces = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = tmp_path_factory.mktemp("mpnet_vocab") / "vocab.txt"
    vocab.write_text("\n".join(["<s>", "<pad>", "</s>", "<unk>", *pieces, "<mask>"]) + "\n", encoding="utf-8")
    return MPNetTokenizerFast(vocab_file=str(vocab))


def test_a_checkpoint_made_for_another_tokenizer_is_reindexed_to_the_teachers(minilm_dir, mpnet_style_tokenizer):
    """The real all-MiniLM-L6-v2 started against a teacher of MPNet's vocabulary: every token keeps its embedding by
    string (special tokens by role), so the encoder reads the teacher's ids of a sentence exactly as it read its own."""
    from transformers import AutoModel, AutoTokenizer, BertConfig

    own_tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    teacher = BertForSequenceClassification(BertConfig(vocab_size=len(mpnet_style_tokenizer), hidden_size=32,
                                                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    student = build_student(StudentConfig(init="checkpoint", checkpoint=str(minilm_dir)), teacher, GLUE_TASKS["mrpc"],
                            mpnet_style_tokenizer).eval()
    assert student.config.vocab_size == len(mpnet_style_tokenizer) == 30527
    assert student.config.pad_token_id == mpnet_style_tokenizer.pad_token_id == 1
    original = AutoModel.from_pretrained(minilm_dir).eval()
    # one sentence: MPNet's pairs have two separators where BERT's have one
    text = "The company's shares rose 4% on Tuesday, a day after its quarterly report."
    theirs, ours = mpnet_style_tokenizer(text, return_tensors="pt"), own_tokenizer(text, return_tensors="pt")
    assert not torch.equal(theirs["input_ids"], ours["input_ids"])  # other ids for the same pieces
    with torch.no_grad():
        got = student.bert(input_ids=theirs["input_ids"], attention_mask=theirs["attention_mask"]).last_hidden_state
        want = original(input_ids=ours["input_ids"], attention_mask=ours["attention_mask"]).last_hidden_state
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_checkpoint_whose_tokenizer_splits_text_otherwise_is_refused(tmp_path, minilm_dir):
    from transformers import BertConfig, BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"zz{i}" for i in range(400))]) + "\n")
    other = BertTokenizerFast(vocab_file=str(vocab))
    teacher = BertForSequenceClassification(BertConfig(vocab_size=len(other), hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=4, intermediate_size=64))
    with pytest.raises(StudentError, match=r"knows only 5 of the teacher's 405 tokens by string") as err:
        build_student(StudentConfig(init="checkpoint", checkpoint=str(minilm_dir)), teacher, GLUE_TASKS["sst2"], other)
    assert "\n" not in str(err.value)
