"""Data for distillation: task files (``task_data``), the packed general corpus (``corpus``), augmented task
data (``augment``) and the teacher's outputs computed once for reuse.

Every source is normalised to the columns ``text_a``, optional ``text_b`` and ``labels``; rows without a gold
label (transfer sentences, word-replaced copies) carry :data:`NO_LABEL`.
"""
from __future__ import annotations

import codecs
import gzip
from pathlib import Path
from typing import Any, Callable

from ernie_common.errors import UserError
from ernie_common.tables import csv_options

TEXT_COLUMNS = ("text_a", "text_b")
NO_LABEL = -100
"""The label of rows without a gold label: the hard-label loss skips them (PyTorch's ``ignore_index``)."""


class DataError(UserError):
    """Unreadable or mis-described data; the message is one line that names the fix."""


class HubUnreachable(DataError):
    """A dataset named by hub id could not be read (offline, or no such dataset/config)."""


def from_hub(what: str, load: Callable[[], Any]) -> Any:
    """Run a hub load; an unreachable hub or unknown name becomes one line naming the fix."""
    try:
        return load()
    except (ConnectionError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HubUnreachable(f"cannot read {what} from the Hugging Face hub ({reason}); check the name, go online, "
                             f"or use local files instead") from None


JSON_SUFFIXES = (".json", ".jsonl")
DELIMITERS = {"\t": "tab", ",": "comma"}


def check_file(path: Path, key: str) -> None:
    """A data file (``.gz`` too) that exists, is not empty and is UTF-8 text; else one line naming the file and the
    fix. Read in chunks, so a large corpus costs a pass over its bytes and no more memory than a chunk."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; fix the path ({key})")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, blank = 0, True
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
        while chunk := fh.read(1 << 22):
            try:
                blank = not decoder.decode(chunk).strip() and blank
            except UnicodeDecodeError as err:
                raise DataError(f"data file {path} is not UTF-8 text (byte {chunk[err.start]:#04x} at offset "
                                f"{offset + err.start}); save it as UTF-8") from None
            offset += len(chunk)
    if blank:
        raise DataError(f"data file {path} is empty; give it a header row and data rows ({key})")


def _has_a_second_line(path: Path) -> bool:
    with open(path, encoding="utf-8-sig") as fh:
        return sum(1 for line, _ in zip((line for line in fh if line.strip()), range(2))) > 1


def _load_one(path: Path, key: str):
    import datasets

    try:
        if path.suffix.lower() in JSON_SUFFIXES:
            return datasets.load_dataset("json", data_files=str(path), split="train")
        return datasets.load_dataset("csv", data_files=str(path), split="train", **csv_options(path))
    except Exception as err:  # pandas' and pyarrow's parse errors have no common base
        cause = err.__cause__ or err.__context__
        reason = next((str(e).strip().splitlines()[0] for e in (cause, err) if e is not None and str(e).strip()),
                      type(err).__name__)
        raise DataError(f"cannot read {path} as a {path.suffix.lstrip('.').upper() or 'CSV'} table ({reason}); "
                        f"check its delimiter and quoting ({key})") from None


def read_table(files: dict[str, str | Path], key: str):
    """TSV/CSV/JSON files (one per split) as a ``datasets.DatasetDict``: delimiter by suffix (``.tsv`` tab, else
    comma), UTF-8. An empty, non-UTF-8, unparsable or header-only file, or one whose single column name holds
    the other delimiter (a CSV named .tsv), is one :class:`DataError` line naming the file and the fix; ``key``
    is the recipe key that names the files."""
    import datasets

    paths = {split: Path(f) for split, f in files.items()}
    for path in paths.values():
        check_file(path, key)
        if path.suffix.lower() not in JSON_SUFFIXES and not _has_a_second_line(path):
            raise DataError(f"{path} has a header but no rows; add data rows ({key})")
    dsd = datasets.DatasetDict({split: _load_one(path, key) for split, path in paths.items()})
    for split, ds in dsd.items():
        path = paths[split]
        columns = ds.column_names
        if len(columns) == 1 and path.suffix.lower() not in JSON_SUFFIXES:
            used = csv_options(path)["delimiter"]
            other = next((d for d in DELIMITERS if d != used and d in columns[0]), None)
            if other:
                raise DataError(f"{path} has one column {columns[0]!r}: it is {DELIMITERS[other]}-separated but read "
                                f"as {DELIMITERS[used]}-separated; name it {'.tsv' if other == chr(9) else '.csv'}")
        if len(ds) == 0:
            raise DataError(f"{path} has a header but no rows; add data rows ({key})")
    return dsd
