"""ernie_common: the one implementation of atomic writes, data-file reading, versions and parameter counts."""
from __future__ import annotations

import pytest

from ernie_common.env import library_versions, machine
from ernie_common.io import atomic_dir, read_json, write_atomic, write_json_atomic
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
