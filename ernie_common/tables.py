"""Reading GLUE-style data files: sentences (or sentence pairs) and their labels from TSV/CSV, or lines of text.

GLUE's files have quirks that every reader must handle alike:

* TSVs contain unbalanced quotation marks inside sentences, so they are read with ``QUOTE_NONE`` (a CSV
  reader's default quoting would swallow lines up to the next quote);
* some files start with a UTF-8 byte-order mark (MRPC), which would otherwise stick to the first column name;
* CoLA's files have no header row: its columns are known by the folder (``HEADERLESS``).

:func:`csv_options` gives these settings to other readers (``datasets.load_dataset("csv", ...)``);
:func:`read_examples` reads with the standard library, for callers that want a few hundred sentences
without ``datasets``.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from ernie_common.errors import UserError

TABLE_SUFFIXES = (".tsv", ".csv")
# GLUE folders whose files have no header row, with their columns (folder names as GLUE's download script writes them)
HEADERLESS = {"CoLA": ("source", "label", "original_label", "sentence")}
# The text columns of GLUE-style files, in the order they are looked for: one (sentences) or two (pairs)
TEXT_COLUMNS = (("sentence",), ("text",), ("sentence1", "sentence2"), ("#1 String", "#2 String"),
                ("question", "sentence"), ("question1", "question2"))
LABEL_COLUMNS = ("label", "Quality", "score", "is_duplicate", "gold_label")
COLUMN_HINT = "name the text column (two, comma-separated, for pairs)"


class TableError(UserError):
    """A data file that cannot be read as asked; the message names the fix."""


@dataclass
class Examples:
    texts: list
    """Strings, or (text, text_pair) tuples for two text columns."""
    labels: list[str] | None
    """The label column's raw values, one per text; None when the file has no label column."""
    columns: tuple[str, ...]
    """The columns the texts came from (empty for a plain text file)."""
    source: str = ""
    """Where the rows came from, for messages (rows built in memory: e.g. "sst2 dev rows"); files say their path."""


def csv_options(path: str | os.PathLike) -> dict:
    """``delimiter``, ``quoting`` and ``encoding`` for a .tsv (tab, no quoting) or any other delimited file
    (comma, standard quoting); the encoding drops a byte-order mark."""
    tsv = Path(path).suffix.lower() == ".tsv"
    return {"delimiter": "\t" if tsv else ",", "quoting": csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
            "encoding": "utf-8-sig"}


def headerless_columns(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The column names of a header-less GLUE file (CoLA's train/dev: the folder says which columns), else
    None. A file in such a folder whose first row names known columns has a header (CoLA's test.tsv)."""
    columns = HEADERLESS.get(Path(path).parent.name)
    if columns is None:
        return None
    options = csv_options(path)
    with open(path, encoding=options.pop("encoding"), newline="") as fh:
        first = next(csv.reader(fh, **options), [])
    known = {*columns, *LABEL_COLUMNS, *(c for cols in TEXT_COLUMNS for c in cols)}
    return None if known & set(first) else columns


def read_rows(path: str | os.PathLike, header: tuple[str, ...] | None = None,
              limit: int | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """The column names and the first ``limit`` rows of a TSV/CSV file. ``header``: the file has no header row
    and these are its columns (default: :func:`headerless_columns`, else the file's first row)."""
    path = Path(path)
    header = header or headerless_columns(path)
    options = csv_options(path)
    with open(path, encoding=options.pop("encoding"), newline="") as fh:
        reader = csv.DictReader(fh, fieldnames=list(header) if header else None, **options)
        rows = []
        for row in reader:
            if limit is not None and len(rows) >= limit:
                break
            rows.append(row)
        return list(reader.fieldnames or []), rows


def text_columns(columns: list[str], wanted: str | None = None, source: str = "the file",
                 hint: str = COLUMN_HINT) -> tuple[str, ...]:
    """The text columns among ``columns``: ``wanted`` ("name" or "a,b" for pairs), else the first of
    :data:`TEXT_COLUMNS` that is present. ``hint`` ends the error: how the caller's user names a column."""
    choices = [tuple(c.strip() for c in wanted.split(","))] if wanted else TEXT_COLUMNS
    for cols in choices:
        if all(c in columns for c in cols):
            return cols
    raise TableError(f"{source} has no {' / '.join('+'.join(c) for c in choices)} column (header: {columns}): {hint}")


def read_examples(path: str | os.PathLike, column: str | None = None, limit: int | None = None,
                  hint: str = COLUMN_HINT) -> Examples:
    """Texts (and labels) of a TSV/CSV file with a GLUE-style header (or a header-less GLUE file), or the
    non-blank lines of any other file. ``column`` picks the text column(s) of a table ("a,b" for pairs)."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path} {'is not a file' if path.exists() else 'does not exist'}: pass a TSV/CSV with a "
                         "header (e.g. GLUE's SST-2/dev.tsv) or a text file with one sentence per line")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        return Examples(lines[:limit] if limit is not None else lines, None, ())
    columns, rows = read_rows(path, limit=limit)
    cols = text_columns(columns, column, str(path), hint)
    texts = [row[cols[0]] if len(cols) == 1 else tuple(row[c] for c in cols) for row in rows]
    label = next((c for c in LABEL_COLUMNS if c in columns and c not in cols), None)
    return Examples(texts, [row[label] for row in rows] if label else None, cols)
