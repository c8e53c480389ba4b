"""Every broken data file is one line that names the file and the fix: for the task's training file, its
validation file and a transfer file alike, through the one ``UserError`` the command-line tools print."""
from __future__ import annotations

from pathlib import Path

import pytest

from compressor.data import DataError, augment
from compressor.data.task_data import load_task_data
from compressor.recipe.schema import AugmentConfig, GeneralDataConfig, TaskConfig, TransferConfig
from compressor.recipe.tasks import GLUE_TASKS
from ernie_common.errors import UserError

GOOD = "sentence,label\na warm and funny film,1\ntwo hours I will never get back,0\n"

# name -> (file content as bytes, file suffix, what the one line must say)
BROKEN = {
    "empty": (b"", ".csv", r"is empty; give it a header row"),
    "header only": (b"sentence,label\n", ".csv", r"has a header but no rows"),
    "wrong delimiter": (b"sentence,label\na fine film,1\na dull film,0\n", ".tsv",
                        r"comma-separated but read as tab-separated; name it .csv"),
    "not utf-8": ("sentence,label\nun film très drôle,1\nennuyeux,0\n".encode("latin-1"), ".csv",
                  r"is not UTF-8 text \(byte 0xe8 at offset \d+\); save it as UTF-8"),
    "labels missing in some rows": (b"sentence,label\na fine film,1\na dull film,\nso so,0\n", ".csv",
                                    r"1 of 3 rows have no 'label' value \(first: data row 2\)"),
    "text empty in every row": (b"sentence,label\n,1\n ,0\n", ".csv", r"column 'sentence' is empty in every row"),
    "unparsable": (b'sentence,label\n"an unclosed quote,1\nfine,0\n', ".csv", r"cannot read .* check its delimiter"),
}
# a transfer file has no labels: the label case does not apply to it
TRANSFER_CASES = [name for name in BROKEN if name != "labels missing in some rows"]


def _write(folder: Path, name: str, content: bytes, suffix: str) -> Path:
    path = folder / (name.replace(" ", "_").replace("-", "") + suffix)
    path.write_bytes(content)
    return path


def _one_line(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message, message
    assert str(path) in message or path.name in message, message
    return message


@pytest.mark.parametrize("role", ["train", "validation"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_task_file_is_one_line(tmp_path, case, role):
    content, suffix, expected = BROKEN[case]
    good = tmp_path / "good.csv"
    good.write_text(GOOD)
    broken = _write(tmp_path, case, content, suffix)
    files = {"train": good, "validation": good, role: broken}
    cfg = TaskConfig(name="custom", train_file=str(files["train"]), validation_file=str(files["validation"]),
                     text_columns=["sentence"], num_labels=2)
    with pytest.raises(DataError, match=expected) as err:
        load_task_data(cfg)
    _one_line(err, broken)


@pytest.mark.parametrize("case", TRANSFER_CASES)
def test_a_broken_transfer_file_is_one_line(tmp_path, glue_dir, case):
    content, suffix, expected = BROKEN[case]
    broken = _write(tmp_path, case, content, suffix)
    sst2 = load_task_data(TaskConfig(name="sst2", glue_dir=str(glue_dir), max_train_samples=8))["train"]
    cfg = AugmentConfig(transfer=TransferConfig(source="files", files=[str(broken)], column="sentence"))
    with pytest.raises(DataError, match=expected) as err:
        augment.build(cfg, sst2, GLUE_TASKS["sst2"], GeneralDataConfig(), seed=0, cache_dir=tmp_path / "cache")
    _one_line(err, broken)


def test_a_broken_file_stops_the_command_with_one_error_line(tmp_path, capsys, tiny_bert_dir, tiny_recipe, write_recipe):
    """The one CLI wrapper: ``python -m compressor.distill`` on an empty training file prints one line, exits 2."""
    from compressor.distill import main

    empty = _write(tmp_path, "empty", b"", ".csv")
    (tmp_path / "dev.csv").write_text(GOOD)
    recipe = tiny_recipe(tiny_bert_dir, finetuned=tiny_bert_dir)
    recipe["task"] = {"name": "custom", "train_file": str(empty), "validation_file": str(tmp_path / "dev.csv"),
                      "text_columns": ["sentence"], "num_labels": 2}
    assert main(["--config", str(write_recipe(tmp_path, recipe)), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: data file ") and "is empty" in err[0], err
