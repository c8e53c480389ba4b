"""Fixtures for the distillation tests: a tiny pretrained *encoder* (no head) and recipe files."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP threads spinning
    against other jobs make each tiny matmul ~50x slower; subprocesses get OMP_NUM_THREADS=1 likewise."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    """The tiny random BERT's encoder alone (a BertModel, like a hub checkpoint before fine-tuning)."""
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny_encoder")
    AutoModel.from_pretrained(tiny_bert_dir).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(out)
    return out


def _tiny_recipe(glue_dir: Path, corpus_file: Path, packed: Path, teacher: Path, task: str = "sst2",
                 finetuned: Path | None = None, general_steps: int = 3, train_samples: int = 48, batch_size: int = 8) -> dict:
    """A four-stage recipe (GD, GED, TAD, TSD) small enough for seconds on a CPU with the tiny teacher."""
    latent = {"hidden": 1.0, "attention": 1.0, "embedding": 1.0}
    common = {"batch_size": batch_size, "max_seq_length": 32, "learning_rate": 1e-3}
    return {
        "task": {"name": task, "glue_dir": str(glue_dir), "max_train_samples": train_samples, "max_eval_samples": 32},
        "teacher": {"pretrained": str(teacher), "finetuned": str(finetuned) if finetuned else None,
                    "finetune": {"epochs": 1, "batch_size": 16, "max_seq_length": 32, "learning_rate": 1e-3}},
        "student": {"num_hidden_layers": 4, "hidden_size": 24, "intermediate_size": 48, "num_attention_heads": 4},
        "general": {"files": [str(corpus_file)], "max_blocks": 400, "cache_dir": str(packed)},
        "logging_steps": 1,
        "save_steps": 2,
        "stages": [
            {"name": "gd", "teacher": "pretrained", "data": "general", "losses": latent, "max_steps": general_steps, **common},
            {"name": "ged", "teacher": "finetuned", "data": "general", "losses": latent, "max_steps": general_steps, **common},
            {"name": "tad", "teacher": "finetuned", "data": "task", "losses": latent, "epochs": 1, **common},
            {"name": "tsd", "teacher": "finetuned", "data": "task", "losses": {**latent, "soft": 1.0, "hard": 1.0},
             "epochs": 1, "temperature": 2.0, **common},
        ],
    }


@pytest.fixture(scope="session")
def tiny_recipe(glue_dir, corpus_file, tmp_path_factory):
    """``tiny_recipe(teacher, **kw)`` -> recipe dict (see :func:`_tiny_recipe`); packed corpora in a session folder."""
    packed = tmp_path_factory.mktemp("packed")
    return lambda teacher, **kw: _tiny_recipe(glue_dir, corpus_file, packed, teacher, **kw)


@pytest.fixture(scope="session")
def write_recipe():
    """``write_recipe(folder, recipe_dict)`` -> path of ``folder/recipe.yaml``."""

    def write(folder: Path, recipe: dict) -> Path:
        path = Path(folder) / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    return write
