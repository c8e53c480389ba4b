"""The HTTP contract over real loopback HTTP: the published OpenAPI matches what the service sends (a schema
fuzzer finds nothing), oversized input is refused fast without reaching the model, and models trained by this
package refuse the request shape of the other input kind."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bentos.local import batch_histogram, bento_server

SCHEMATHESIS = [sys.executable, "-m", "schemathesis.cli"]


def post(server, path: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}{path}", content=content, headers={"Content-Type": "application/json"},
                      timeout=60, trust_env=False)


def test_a_megabyte_text_is_refused_at_once_and_never_reaches_the_model(tiny_server):
    calls_before = batch_histogram(tiny_server.url)[1]
    start = time.perf_counter()
    response = post(tiny_server, "/classify", {"texts": ["a fine film", "x" * 1_000_000]})
    elapsed = time.perf_counter() - start
    assert response.status_code == 422, response.text
    assert "texts.1" in response.json()["error"] and "COMPRESSOR_MAX_CHARS" in response.json()["error"]
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    assert batch_histogram(tiny_server.url)[1] == calls_before  # no model call for it


def test_a_body_larger_than_any_valid_request_is_refused_unread(tiny_server):
    # COMPRESSOR_MAX_ITEMS=16 here: 16 pairs of 10,000-character texts fit in under 4 MB even JSON-escaped
    response = post(tiny_server, "/classify", b'{"texts": ["' + b"y" * 5_000_000 + b'"]}')
    assert response.status_code == 413 and "bytes" in response.json()["error"]


def schemathesis_run(url: str, tmp_path: Path, max_examples: int = 500) -> subprocess.CompletedProcess:
    """Every check, bounded examples per operation (Unicode and control characters in the texts too), a fixed
    seed, one worker, this loopback server only."""
    return subprocess.run(
        [*SCHEMATHESIS, "run", f"{url}/docs.json", "--checks", "all", "--max-examples", str(max_examples),
         "--seed", "7", "--workers", "1", "--no-shrink", "--request-timeout", "30", "--max-failures", "20",
         "--suppress-health-check", "too_slow",  # generation speed on a busy CI machine is not the contract
         "--report-dir", str(tmp_path / "schemathesis")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)


def failures_of(run: subprocess.CompletedProcess) -> str:
    lines = run.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if "FAILURES" in line), max(0, len(lines) - 40))
    return "\n".join(line[:300] for line in lines[start:start + 80]) + run.stderr[-2000:]


def test_schema_fuzzer_finds_no_contract_failure(tiny_server, tmp_path):
    """schemathesis (all checks: status codes, content types, response schemas, valid requests accepted,
    invalid ones refused, unsupported methods) against the service's own /docs.json."""
    run = schemathesis_run(tiny_server.url, tmp_path)
    assert run.returncode == 0, failures_of(run)
    generated = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert generated and generated.group(1) == generated.group(2), run.stdout[-1500:]
    assert int(generated.group(1)) >= 1000, f"only {generated.group(1)} cases generated"


# ------------------------------------------------------------------ models trained by the package itself

@pytest.fixture(scope="module")
def trained(tiny_bert_dir, glue_dir, tmp_path_factory) -> dict[str, Path]:
    """A single-text (SST-2) and a pair (MRPC) classifier fine-tuned by compressor.finetune: their configs
    are written by the package (label_maps), nothing added by hand."""
    from compressor.recipe.schema import FinetuneConfig, Recipe, TaskConfig, TeacherConfig
    from compressor.run.finetune import finetune_teacher

    out = tmp_path_factory.mktemp("trained")
    models = {}
    for task in ("sst2", "mrpc"):
        cfg = TaskConfig(name=task, glue_dir=str(glue_dir), max_train_samples=32, max_eval_samples=32)
        ft = FinetuneConfig(epochs=1, batch_size=16, max_seq_length=32)
        recipe = Recipe(task=cfg, teacher=TeacherConfig(pretrained=str(tiny_bert_dir), finetune=ft))
        path, _ = finetune_teacher(recipe, out / task, report_to=[])
        shutil.rmtree(Path(path) / "logs", ignore_errors=True)
        models[task] = Path(path)
    return models


@pytest.mark.parametrize("task, refused, accepted, wanted_key", [
    ("sst2", {"pairs": [["a film", "a movie"]]}, {"texts": ["a film"]}, '"texts"'),
    ("mrpc", {"texts": ["a film"]}, {"pairs": [["a film", "a movie"]]}, '"pairs"'),
])
def test_package_trained_models_refuse_the_other_input_kind(trained, server_env, tmp_path, task,
                                                            refused, accepted, wanted_key):
    with bento_server(trained[task], env=server_env, log_dir=tmp_path) as server:
        wrong = post(server, "/classify", refused)
        right = post(server, "/classify", accepted)
        info = post(server, "/model_info", {}).json()
        spec = httpx.get(f"{server.url}/docs.json", timeout=30, trust_env=False).json()
    assert wrong.status_code == 422 and wanted_key in wrong.json()["error"], wrong.text
    assert right.status_code == 200 and len(right.json()) == 1, right.text
    assert info["is_pair"] is (task == "mrpc")
    schema = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert list(schema["properties"]) == [wanted_key.strip('"')] and schema["required"] == [wanted_key.strip('"')]
