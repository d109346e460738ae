"""Where a bad row of a task's data is: the file and line behind a split's row, and the line a reader
could not take.

`datasets` names neither: a row is an index into the split (blank lines skipped, files concatenated),
and a file it cannot parse is a `DatasetGenerationError` around a pyarrow error. Everything here runs
only once an error has happened, so a good dataset costs nothing: the files are read again, line by line,
to name the place.

Example:
    >>> import json, pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "train.jsonl"
    >>> _ = path.write_text('{"a": 1}\\n\\n{"a": 2}\\n{"a": 3\\n')
    >>> locate_row([str(path)], "json", 1).endswith("train.jsonl' line 3")
    True
    >>> describe_unreadable([str(path)], "json").endswith("line 4: not valid JSON (Expecting ',' delimiter at column 8)")
    True
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def locate_row(files: list[str], builder: str, row: int, delimiter: str = ",") -> str:
    """Where row `row` of a split read from `files` (in order) by the `datasets` builder `builder` is:
    ``'<file>' line <n>`` for JSON Lines and CSV, ``'<file>' record <n>`` for a JSON array or Parquet;
    the split's row as such when it cannot be found (a file changed since it was read)."""
    remaining = row
    for path in files:
        if builder == "parquet":
            import pyarrow.parquet as pq

            count = pq.ParquetFile(path).metadata.num_rows
            if remaining < count:
                return f"{path!r} record {remaining}"
            remaining -= count
            continue
        for place in _csv_rows(path, delimiter) if builder == "csv" else _json_rows(path):
            if remaining == 0:
                return f"{path!r} {place}"
            remaining -= 1
    return f"row {row} of {files!r}"


def describe_unreadable(files: list[str], builder: str) -> str | None:
    """The first place in JSON `files` that a JSON reader refuses, as ``'<file>' line <n>: <problem>``:
    a line that is not valid JSON, not an object, holds a number no float64 holds, or gives a column
    another type than the lines before it. None when no line explains it (or the files are not JSON)."""
    if builder != "json":
        return None
    seen: dict[str, tuple[str, str]] = {}  # column -> (type, where it was first seen)
    for path in files:
        if _is_json_array(path):
            continue
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path!r} line {number}"
                problem = _line_problem(line)
                if problem is not None:
                    return f"{where}: {problem}"
                for column, value in json.loads(line).items():
                    kind = _json_kind(value)
                    if kind is None:
                        continue
                    first = seen.setdefault(column, (kind, where))
                    if first[0] != kind:
                        return (
                            f"{where}: column {column!r} holds {kind}, but {first[0]} at {first[1]}; give every "
                            "row the same type"
                        )
    return None


def first_failing_row(ds: Any, preprocess: Callable[..., Any], kwargs: dict[str, Any], chunk: int = 1000) -> int | None:
    """The first row of `ds` that `preprocess` (a task's batched preprocessing) fails on alone, when the
    failure is the row's own: None when no row fails alone, or when the first failing row is the first
    row and none of the rows after it (in its chunk) passes, i.e. when every row fails alike (a tokenizer
    the task cannot use is no row's fault). Chunks first, then rows: it runs only after a failure."""

    def fails(start: int, stop: int) -> bool:
        try:
            preprocess(ds[start:stop], **kwargs)
        except (TypeError, ValueError, KeyError, IndexError):  # an HfmtlError is a ValueError too
            return True
        return False

    for start in range(0, len(ds), chunk):
        stop = min(start + chunk, len(ds))
        if not fails(start, stop):
            continue
        row = next((r for r in range(start, stop) if fails(r, r + 1)), None)
        if row == 0 and all(fails(r, r + 1) for r in range(1, stop)):
            return None
        return row
    return None


@contextlib.contextmanager
def reader_logs_silenced() -> Iterator[None]:
    """No log line from `datasets`' file readers (JSON, CSV, Parquet...) while a split loads: they log a
    failure before raising it, and the error made of that names the file and line in a line of its own."""
    reader = logging.getLogger("datasets.packaged_modules")
    level = reader.level
    reader.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        reader.setLevel(level)


def _json_rows(path: str) -> Iterator[str]:
    """Where each row of a JSON file is: 'line n' (JSON Lines), or 'record n' of a JSON array."""
    if _is_json_array(path):
        with open(path, encoding="utf-8") as f:
            yield from (f"record {i}" for i in range(len(json.load(f))))
        return
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():  # the reader skips blank lines
                yield f"line {number}"


def _csv_rows(path: str, delimiter: str) -> Iterator[str]:
    """'line n' of each data row of a CSV file: the line it starts on (a quoted cell may span lines)."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        next(reader, None)  # the header
        end = reader.line_num
        for cells in reader:
            start, end = end + 1, reader.line_num
            if cells:  # pandas skips blank lines
                yield f"line {start}"


def _is_json_array(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    return head.startswith("[") and Path(path).suffix.lower() != ".jsonl"


class _TooLarge(ValueError):
    pass


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # a literal such as 1e400: pyarrow refuses it, Python would read inf
        raise _TooLarge(text)
    return value


def _line_problem(line: str) -> str | None:
    try:
        value = json.loads(line.rstrip(), parse_float=_parse_float)
    except _TooLarge as err:
        return f"the number {err} is too large for a float64"
    except json.JSONDecodeError as err:
        return f"not valid JSON ({err.msg} at column {err.colno})"
    if not isinstance(value, dict):
        kind = {list: "array", str: "string"}.get(type(value), type(value).__name__)
        return f"a JSON {kind}, not an object (one example per line)"
    return None


def _json_kind(value: Any) -> str | None:
    """The type a JSON value gives a column (None: null, which fits any); ints and floats are numbers."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "booleans"
    if isinstance(value, (int, float)):
        return "numbers"
    if isinstance(value, str):
        return "strings"
    if isinstance(value, dict):
        return "objects"
    inner = {_json_kind(item) for item in value} - {None}
    return f"lists of {inner.pop()}" if len(inner) == 1 else "lists"
