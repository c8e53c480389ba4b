"""``make demo`` anywhere: local data when the folder is there, the hub when it is not, one line when neither.

Hub loading is replaced at the ``datasets.load_dataset`` boundary only; everything behind it is the real code.
"""
from __future__ import annotations

from pathlib import Path

import datasets
import yaml
from transformers import AutoTokenizer

from compressor import demo
from compressor.data.corpus import general_corpus
from compressor.data.task_data import load_task_data
from compressor.recipe.schema import load_recipe


def _demo_recipe(tmp_path: Path, glue_dir, corpus) -> Path:
    data = yaml.safe_load(demo.DEMO_RECIPE.read_text())
    data["task"]["glue_dir"] = str(glue_dir)
    data["general"]["files"] = [str(corpus)]
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_demo_reads_the_local_folder_when_it_is_there(tmp_path, glue_dir, corpus_file):
    recipe = yaml.safe_load(_demo_recipe(tmp_path, glue_dir, corpus_file).read_text())
    assert demo.missing_local_data(recipe) == [] and demo.data_overrides(recipe) == {}
    shipped = yaml.safe_load(demo.DEMO_RECIPE.read_text())
    assert shipped["task"]["glue_dir"] == "../shared/data/glue"
    assert shipped["general"]["files"] == ["../shared/data/corpus/general_en.txt.gz"]


def test_without_the_folder_the_demo_reads_sst2_and_wikitext_from_the_hub(tmp_path, monkeypatch, minilm_dir):
    recipe_file = _demo_recipe(tmp_path, tmp_path / "no" / "glue", tmp_path / "no" / "corpus.txt.gz")
    overrides = demo.data_overrides(yaml.safe_load(recipe_file.read_text()))
    recipe = load_recipe(recipe_file, {**overrides, "general.cache_dir": str(tmp_path / "packed"),
                                       "task.max_eval_samples": None})
    assert recipe.task.glue_dir is None and recipe.general.files == []

    calls = []

    def load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs.get("streaming", False)))
        if path == "nyu-mll/glue":
            rows = {"sentence": ["a fine film", "a dull film", "warm and funny"], "label": [1, 0, 1], "idx": [0, 1, 2]}
            return datasets.DatasetDict(train=datasets.Dataset.from_dict(rows), validation=datasets.Dataset.from_dict(rows),
                                        test=datasets.Dataset.from_dict(rows))
        text = [" = Valkyria Chronicles III = ", "", " Senjō no Valkyria 3 is a tactical role @-@ playing game . " * 8] * 50
        return datasets.IterableDataset.from_generator(lambda: ({"text": t} for t in text))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    task = load_task_data(recipe.task)
    assert task["train"]["text_a"] == ["a fine film", "a dull film", "warm and funny"]
    blocks = general_corpus(recipe.general, AutoTokenizer.from_pretrained(minilm_dir), recipe.stages[0].max_seq_length)
    assert len(blocks) > 0 and {len(ids) for ids in blocks["input_ids"]} == {64}
    assert calls[0] == ("nyu-mll/glue", "sst2", False)
    assert set(calls[1:]) == {("Salesforce/wikitext", "wikitext-103-raw-v1", True)}


def test_offline_without_the_folder_one_line_says_what_to_put_where(tmp_path, monkeypatch, capsys):
    glue, corpus = tmp_path / "data" / "glue", tmp_path / "data" / "corpus" / "general_en.txt.gz"
    recipe_file = _demo_recipe(tmp_path, glue, corpus)

    def offline(*_a, **_k):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert demo.main(["--config", str(recipe_file), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("demo: ") and "on the Hugging Face hub" in err[0]
    assert len(err) == 2 and err[1].startswith("error: ")
    assert f"SST-2/ folder (train.tsv, dev.tsv) in {glue}" in err[1] and f"a plain-text corpus at {corpus}" in err[1]
    assert "go online" in err[1]
