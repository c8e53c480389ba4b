"""Recipes: parsing, overrides, and one-line errors before any work starts."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compressor.recipe.schema import ConfigError, apply_overrides, load_recipe, parse_overrides

CONFIGS = Path(__file__).resolve().parents[2] / "compressor" / "configs"


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def demo(tmp_path, glue_dir, corpus_file, minilm_dir) -> dict:
    data = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    data["task"]["glue_dir"] = str(glue_dir)
    data["general"]["files"] = [str(corpus_file)]
    return data


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_shipped_recipes_parse(name, corpus_file, glue_dir, monkeypatch):
    """The paper recipes validate as shipped, naming a hub corpus that is read only when GD runs (no network here)."""
    import socket

    def no_network(*_a, **_k):
        raise AssertionError("validation touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    overrides = {"general.files": [str(corpus_file)], "task.glue_dir": str(glue_dir)} if name == "demo" else {}
    recipe = load_recipe(CONFIGS / f"{name}.yaml", overrides)
    # the demo's student is cut from its fine-tuned teacher, so it skips GD (the pretrained teacher's stage)
    stages = ["ged", "tad", "tsd"] if name == "demo" else ["gd", "ged", "tad", "tsd"]
    assert [s.name for s in recipe.stages] == stages
    assert [(s.teacher, s.data) for s in recipe.stages][-3:] == [
        ("finetuned", "general"), ("finetuned", "task"), ("finetuned", "task")]
    assert {"soft", "hard"} <= set(recipe.stages[-1].losses)
    assert not {"soft", "hard"} & set(recipe.stages[-2].losses)
    if name == "demo":
        assert recipe.student.init == "pruned" and recipe.augment.transfer.source == "general"
        assert [s.augment for s in recipe.stages] == [False, True, True]
    assert (recipe.student.num_hidden_layers, recipe.student.hidden_size, recipe.student.intermediate_size,
            recipe.student.num_attention_heads) == (4, 312, 1200, 12)
    if name != "demo":
        g = recipe.general
        assert (g.files, g.dataset, g.dataset_config, g.text_column) == ([], "wikimedia/wikipedia", "20231101.en", "text")


def test_demo_teacher_resolves_to_the_installed_minilm(tmp_path, demo, minilm_dir):
    recipe = load_recipe(_write(tmp_path, demo))
    assert Path(recipe.teacher.pretrained) == minilm_dir


def test_overrides_reach_stages_by_name_and_parse_yaml_values(tmp_path, demo):
    recipe = load_recipe(_write(tmp_path, demo), ["--stages.tsd.epochs", "3", "--stages.ged.learning_rate=1e-3",
                                                 "--task.max_train_samples", "null", "--seed", "7"])
    assert recipe.stage("tsd").epochs == 3.0
    assert recipe.stage("ged").learning_rate == pytest.approx(1e-3)
    assert recipe.task.max_train_samples is None
    assert recipe.seed == 7


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["task"].update(nmae="x"), "unknown key 'task.nmae'"),
    (lambda d: d["stages"][0].update(lr=1), "unknown key 'stages[0].lr'"),
    (lambda d: d.update(extra=1), "unknown key 'extra'"),
    (lambda d: d["task"].update(name="glue-sst3"), "unknown task 'glue-sst3'"),
    (lambda d: d["task"].update(glue_dir="/nonexistent/glue"), "task.glue_dir /nonexistent/glue does not exist"),
    (lambda d: d["general"].update(files=["/nonexistent.txt"]), "general corpus file /nonexistent.txt does not exist"),
    (lambda d: d["general"].update(files=[]), "general.files is empty and general.dataset unset"),
    (lambda d: d["general"].update(dataset="wikimedia/wikipedia"), "general.files and general.dataset are both set"),
    (lambda d: d["general"].update(max_blocks=0), "general.max_blocks must be positive"),
    (lambda d: d["general"].update(colum="text"), "unknown key 'general.colum'"),
    (lambda d: d["teacher"].update(finetuned="/nonexistent/teacher"), "not a Hugging Face model directory"),
    (lambda d: d["stages"][0].update(teacher="finetunned"), "teacher must be one of pretrained, finetuned"),
    (lambda d: d["stages"][0].update(data="wiki"), "data must be one of general, task"),
    (lambda d: d["stages"][0]["losses"].update(cosine=1.0), "unknown loss 'cosine'"),
    (lambda d: d["stages"][0]["losses"].update(hard=1.0), "soft/hard-label losses need task data"),
    (lambda d: d["stages"][0].update(max_steps=-1), "set max_steps"),
    (lambda d: d["stages"][0].update(group_by_length=True), "group_by_length needs task data"),
    (lambda d: d["stages"][1].update(name="ged"), "appears twice"),
    (lambda d: d["stages"][2].update(epochs="three"), "stages[2].epochs must be a number"),
    (lambda d: d["student"].update(hidden_size=310), "must be divisible by num_attention_heads"),
    (lambda d: d["student"].update(init="checkpoint"), "student.checkpoint is empty"),
    (lambda d: d.update(stages=[]), "has no stages"),
])
def test_bad_recipes_fail_with_one_line(tmp_path, demo, mutate, message):
    mutate(demo)
    with pytest.raises(ConfigError) as err:
        load_recipe(_write(tmp_path, demo))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)


@pytest.mark.parametrize("args, message", [
    (["--stages.nope.epochs", "1"], "no stage named 'nope'"),
    (["stages.tsd.epochs"], "overrides look like"),
    (["--seed"], "needs a value"),
])
def test_bad_overrides(tmp_path, demo, args, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(_write(tmp_path, demo), args)


def test_parse_overrides_types():
    assert parse_overrides(["--a.b", "[x, y]", "--c=true", "--d", "0.5"]) == {"a.b": ["x", "y"], "c": True, "d": 0.5}


# --------------------------------------------------------------------------- overlays

BASE = {
    "task": {"name": "sst2", "max_train_samples": 100},
    "teacher": {"pretrained": "bert-base-uncased", "finetune": {"epochs": 3, "learning_rate": 2e-5}},
    "general": {"dataset": "wikimedia/wikipedia", "dataset_config": "20231101.en"},
    "stages": [
        {"name": "gd", "teacher": "pretrained", "data": "general", "losses": {"hidden": 1.0, "attention": 1.0},
         "max_steps": 10},
        {"name": "tad", "losses": {"hidden": 1.0}, "epochs": 2},
        {"name": "tsd", "losses": {"hidden": 1.0, "soft": 1.0, "hard": 1.0}, "epochs": 3, "learning_rate": 3e-5},
    ],
}


def _files(tmp_path: Path, *docs: dict) -> list[Path]:
    paths = []
    for i, doc in enumerate(docs):
        paths.append(tmp_path / f"layer{i}.yaml")
        paths[-1].write_text(yaml.safe_dump(doc))
    return paths


def test_an_overlay_merges_sections_key_by_key_and_replaces_values(tmp_path):
    overlay = {"task": {"max_train_samples": 5}, "teacher": {"finetune": {"epochs": 1}},
               "general": {"files": [], "max_blocks": 7}, "stages": {"tsd": {"epochs": 1, "losses": {"hard": 1.0}}}}
    recipe = load_recipe(_files(tmp_path, BASE, overlay))
    assert (recipe.task.name, recipe.task.max_train_samples) == ("sst2", 5)
    assert (recipe.teacher.finetune.epochs, recipe.teacher.finetune.learning_rate) == (1.0, 2e-5)
    assert (recipe.general.dataset, recipe.general.max_blocks) == ("wikimedia/wikipedia", 7)
    assert [s.name for s in recipe.stages] == ["gd", "tad", "tsd"]  # a mapping by name keeps the list
    assert recipe.stage("tsd").losses == {"hard": 1.0}  # a losses table is one value: replaced, not merged
    assert (recipe.stage("tsd").epochs, recipe.stage("tsd").learning_rate) == (1.0, 3e-5)


def test_a_stage_list_in_an_overlay_is_the_new_list_with_each_stage_inherited_by_name(tmp_path):
    overlay = {"stages": [{"name": "tsd", "learning_rate": 1e-4}, {"name": "direct", "from": "tsd", "losses": {"hard": 1.0}}]}
    recipe = load_recipe(_files(tmp_path, BASE, overlay), ["--stages.direct.epochs", "5"])
    assert [s.name for s in recipe.stages] == ["tsd", "direct"]
    tsd, direct = recipe.stages
    assert (tsd.epochs, tsd.learning_rate, tsd.losses) == (3.0, 1e-4, {"hidden": 1.0, "soft": 1.0, "hard": 1.0})
    assert (direct.epochs, direct.learning_rate, direct.losses) == (5.0, 3e-5, {"hard": 1.0})  # a copy of the base tsd


def test_overlays_apply_in_order_and_the_composed_dict_is_plain_data(tmp_path):
    from compressor.recipe.schema import compose

    first, second = {"seed": 1, "stages": {"gd": {"max_steps": 20}}}, {"seed": 2}
    data = compose(*_files(tmp_path, BASE, first, second), {"stages.gd.max_steps": 30})
    assert data["seed"] == 2 and data["stages"][0]["max_steps"] == 30
    assert BASE["stages"][0]["max_steps"] == 10  # layers are not mutated


@pytest.mark.parametrize("overlay, message", [
    ({"studnet": {"init": "random"}}, "unknown key 'studnet' in"),
    ({"teacher": {"finetune": {"epoch": 1}}}, "unknown key 'teacher.finetune.epoch' in"),
    ({"stages": {"tsd": {"lr": 1}}}, "unknown key 'stages.tsd.lr' in"),
    ({"stages": [{"name": "ged"}]}, "stage 'ged' is not in the recipe it overlays (stages: gd, tad, tsd)"),
    ({"stages": {"ged": {"epochs": 1}}}, "stage 'ged' is not in the recipe it overlays"),
    ({"stages": [{"epochs": 1}]}, "stages[0] needs a name"),
    ({"task": "sst2"}, "task must be a mapping"),
])
def test_bad_overlays_are_one_line_naming_the_file(tmp_path, overlay, message):
    paths = _files(tmp_path, BASE, overlay)
    with pytest.raises(ConfigError) as err:
        load_recipe(paths)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(paths[1]) in str(err.value)


@pytest.mark.parametrize("task", ["sst2", "mrpc", "cola", "stsb"])
def test_shipped_scales_and_arms_compose_with_the_paper_recipes(task, glue_dir, corpus_file, tiny_bert_dir):
    """Every shipped overlay lays over a paper recipe into a valid recipe (data paths pointed at the real folder)."""
    data = {"task.glue_dir": str(glue_dir), "general.files": [str(corpus_file)], "teacher.pretrained": str(tiny_bert_dir)}
    composed = 0
    for scale in sorted((CONFIGS / "scales").glob("*.yaml")):
        per_task = CONFIGS / "scales" / scale.stem / f"{task}.yaml"
        layers = [CONFIGS / f"{task}.yaml", scale, *([per_task] if per_task.is_file() else [])]
        for arm in sorted((CONFIGS / "arms").glob("*.yaml")):
            start = {"student.checkpoint": str(tiny_bert_dir)} if arm.stem in "cde" else {}
            recipe = load_recipe([*layers, arm], {**data, **start})
            assert recipe.stages and recipe.task.name == task
            composed += 1
    assert composed >= 2 * 9, composed  # the scales times the ablation's rows: a moved folder is not skipped


def test_overrides_never_share_a_value_between_recipes():
    """A settings dict applied to two recipes, then a dotted key on one of them, leaves the other alone."""
    shared = {"teacher.finetune": {"epochs": 1}}
    first = apply_overrides({"teacher": {}}, shared)
    second = apply_overrides({"teacher": {}}, {**shared, "teacher.finetune.epochs": 3})
    assert first["teacher"]["finetune"]["epochs"] == 1 and second["teacher"]["finetune"]["epochs"] == 3
    assert shared["teacher.finetune"] == {"epochs": 1}


# --------------------------------------------------------------------------- the published JSON schema


def _schema_errors(schema: dict, instance: dict) -> list[str]:
    """What a JSON Schema validator finds wrong with ``instance``: ``jsonschema`` where installed, else
    ``jsonschema_rs`` (which schemathesis brings), else the recipe's own pydantic models."""
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(instance)]
    try:
        import jsonschema_rs
    except ImportError:
        from pydantic import ValidationError

        from compressor.recipe.schema import Recipe
        try:
            Recipe.model_validate(instance)
        except ValidationError as err:
            return [e["msg"] for e in err.errors()]
        return []
    return [e.message for e in jsonschema_rs.validator_for(schema).iter_errors(instance)]


def _printed_schema(capsys) -> dict:
    import json

    from compressor.distill import main

    assert main(["--print-schema"]) == 0  # no --config, no --output-dir
    return json.loads(capsys.readouterr().out)


def _shipped_layers() -> list[list[Path]]:
    """Every shipped recipe alone, and every (recipe, scale, per-task slice, arm) composition reproduce runs."""
    stacks = [[path] for path in sorted(CONFIGS.glob("*.yaml"))]
    for task in ("sst2", "mrpc", "cola", "stsb"):
        for scale in sorted((CONFIGS / "scales").glob("*.yaml")):
            per_task = CONFIGS / "scales" / scale.stem / f"{task}.yaml"
            for arm in sorted((CONFIGS / "arms").glob("*.yaml")):
                stacks.append([CONFIGS / f"{task}.yaml", scale, *([per_task] if per_task.is_file() else []), arm])
    return stacks


def test_the_printed_schema_validates_every_shipped_recipe_and_composition(capsys):
    from compressor.recipe.schema import compose

    schema = _printed_schema(capsys)
    assert schema["$schema"].endswith("2020-12/schema") and schema["title"] == "Recipe"
    stacks = _shipped_layers()
    assert len(stacks) >= 13 + 4 * 2 * 9, len(stacks)  # a moved folder is not silently skipped
    for layers in stacks:
        assert _schema_errors(schema, compose(*layers)) == [], [p.name for p in layers]


@pytest.mark.parametrize("mutate", [
    lambda d: d["task"].update(nmae="x"),
    lambda d: d["stages"][0]["losses"].update(cosine=1.0),
    lambda d: d["stages"][2].update(epochs="three"),
    lambda d: d["stages"][0].update(teacher="finetunned"),
    lambda d: d["general"].update(max_blocks=0),
])
def test_the_printed_schema_refuses_what_load_recipe_refuses(capsys, mutate):
    """The schema an editor gets is the recipe's: each mistake of the catalogue above that it can see is an
    error there too (so the test above is no echo of a schema that accepts anything)."""
    data = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    mutate(data)
    assert _schema_errors(_printed_schema(capsys), data)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["teacher"]["finetune"].update(max_train_samples=100),
     "'teacher.finetune.max_train_samples' is now 'teacher.finetune.sample_rows'; rename the key in the recipe"),
    (lambda d: d["stages"][2].update(batch_size=2.5), "stages[2].batch_size must be a whole number, got 2.5"),
    (lambda d: d["stages"][2].update(epochs=True), "stages[2].epochs must be a number, got True"),
    (lambda d: d["stages"][1]["losses"].update(hidden="x"), "stages[1].losses.hidden must be a number, got 'x'"),
    (lambda d: d["stages"][0]["losses"].update(cosine=1.0),
     "unknown loss 'cosine': stages[0].losses keys must be one of hidden, attention, embedding, soft, hard"),
    (lambda d: d["student"].update(prune={"layers": "best"}),
     "student.prune.layers must be one of auto, uniform, importance, got 'best'"),
    (lambda d: d["stages"][1].pop("name"), "stages[1].name is missing"),
    (lambda d: d["task"].update(text_columns=["a", "b", "c"]), "task.text_columns must be at most 2 items"),
    (lambda d: d["stages"][0].update(temperature=0), "stages[0].temperature must be positive, got 0"),
    (lambda d: d.update(augment={"mlm": {"p": 1.5, "copies": 0}}),
     "augment.mlm.copies must be at least 1, got 0 (and 1 more)"),
    (lambda d: d["task"].update(nmae="x"), "valid keys here: name, glue_dir, train_file, validation_file"),
])
def test_pydantic_errors_read_as_one_located_line(tmp_path, demo, mutate, message):
    """Where (dotted, with list indexes), what was wrong, and what is valid there."""
    mutate(demo)
    with pytest.raises(ConfigError) as err:
        load_recipe(_write(tmp_path, demo))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_numbers_from_yaml_strings_and_lists_of_one_are_read_as_before(tmp_path, demo):
    """PyYAML reads ``1e-4`` (no dot) as a string and ``files: a.txt`` is one file: both are accepted."""
    demo["stages"][0]["learning_rate"] = "1e-4"
    demo["stages"][0]["batch_size"] = "16"
    demo["general"]["files"] = demo["general"]["files"][0]
    recipe = load_recipe(_write(tmp_path, demo))
    assert (recipe.stages[0].learning_rate, recipe.stages[0].batch_size) == (1e-4, 16)
    assert recipe.general.files == [demo["general"]["files"]]
