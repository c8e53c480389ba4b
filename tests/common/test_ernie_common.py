"""ernie_common: the one implementation of atomic writes, data-file reading, versions and parameter counts."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict

from ernie_common.env import library_versions, machine
from ernie_common.io import atomic_dir, read_json, write_atomic, write_json_atomic
from ernie_common.options import add_options, picked
from ernie_common.params import count_params
from ernie_common.tables import TableError, read_examples


def test_write_atomic_leaves_the_old_file_and_no_temp_on_failure(tmp_path):
    target = write_json_atomic(tmp_path / "sub" / "a.json", {"x": 1})
    assert read_json(target) == {"x": 1}

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomic(target, broken)
    assert read_json(target) == {"x": 1} and [p.name for p in target.parent.iterdir()] == ["a.json"]


@pytest.mark.parametrize("if_exists, kept", [("replace", "new"), ("keep", "old")])
def test_atomic_dir_replaces_or_keeps(tmp_path, if_exists, kept):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "which").write_text("old")
    with atomic_dir(folder, if_exists=if_exists) as work:
        (work / "which").write_text("new")
    assert (folder / "which").read_text() == kept
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or moved-aside folder left


def test_atomic_dir_error_and_failure_leave_nothing(tmp_path):
    folder = tmp_path / "out"
    with pytest.raises(ValueError):
        with atomic_dir(folder) as work:
            (work / "part").write_text("x")
            raise ValueError("build failed")
    assert list(tmp_path.iterdir()) == []
    folder.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_dir(folder, if_exists="error"):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_read_examples_glue_quirks(tmp_path):
    cola = tmp_path / "CoLA"
    cola.mkdir()
    (cola / "dev.tsv").write_text('gj04\t1\t\tThe "book is red.\nsrc\t0\t*\tBook the red is.\n')
    headerless = read_examples(cola / "dev.tsv")  # no header row, an unbalanced quote
    assert headerless.texts == ['The "book is red.', "Book the red is."] and headerless.labels == ["1", "0"]
    mrpc = tmp_path / "dev.tsv"
    mrpc.write_text("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b.\tB a.\n", encoding="utf-8")
    pairs = read_examples(mrpc)  # byte-order mark before the header
    assert pairs.texts == [("A b.", "B a.")] and pairs.labels == ["1"]
    with pytest.raises(TableError, match="no nope column.*--text-column"):
        read_examples(mrpc, column="nope", hint="pass --text-column")
    with pytest.raises(TableError, match="does not exist"):
        read_examples(tmp_path / "missing.tsv")


def test_versions_machine_and_parameter_counts():
    torch = pytest.importorskip("torch")

    versions = library_versions(("torch", "surely-not-installed-dist"))
    assert versions["torch"] and versions["surely-not-installed-dist"] is None and versions["python"]
    assert machine()["cores"] >= 1
    layer = torch.nn.Linear(3, 2)
    assert count_params(layer) == count_params(layer.state_dict()) == 8
    with pytest.raises(TypeError):
        count_params(3)



@dataclass
class _Options:
    level: Literal["O1", "O2"] | None = "O2"
    max_batch: int = field(default=64, metadata={"help": "largest batch, 100% of it"})
    fp16: bool = False
    cache: bool = True
    data: Path | None = None
    ratio: float = 0.5
    table: dict = field(default_factory=dict)


class _Model(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    columns: list[str] | None = None
    """The text columns."""
    rows: int | None = None


def test_options_are_generated_from_a_dataclass_or_a_pydantic_model():
    """Each field's flag, type, default and help come from the class: parsing nothing gives the class's defaults,
    and values are converted to the field's type."""
    parser = argparse.ArgumentParser()
    names = add_options(parser, _Options, skip=("table",)) + add_options(parser, _Model)
    assert picked(parser.parse_args([]), names) == {"level": "O2", "max_batch": 64, "fp16": False, "cache": True,
                                                     "data": None, "ratio": 0.5, "columns": None, "rows": None}
    args = parser.parse_args(["--level", "O1", "--max-batch", "8", "--fp16", "--no-cache", "--data", "x.tsv",
                              "--ratio", "0.25", "--columns", "a", "b", "--rows", "3"])
    assert picked(args, names) == {"level": "O1", "max_batch": 8, "fp16": True, "cache": False, "data": Path("x.tsv"),
                                   "ratio": 0.25, "columns": ["a", "b"], "rows": 3}
    with pytest.raises(SystemExit):
        parser.parse_args(["--level", "O9"])
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["max_batch"] == "largest batch, 100%% of it (default: %(default)s)"
    assert helps["columns"] == "The text columns."
    with pytest.raises(TypeError, match="--table"):
        add_options(argparse.ArgumentParser(), _Options)
