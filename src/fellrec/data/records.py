"""Reading files line by line, so that every error names the file and the line it came from."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import IO, Iterator

from fellrec.errors import FellrecError


def require_file(path: Path, what: str) -> Path:
    """Return `path` if it is a file, else fail with a message saying which input it was meant to be."""
    if not path.is_file():
        raise FellrecError(f"{what} not found", path)
    return path


def open_text(path: Path) -> IO[str]:
    """Open a text file, transparently gunzipping `.gz` files."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def iter_json_records(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield `(line, record)` from a JSON array of objects or from JSON lines, with 1-based line numbers."""
    with open_text(path) as f:
        text = f.read()
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] == "[":
        yield from _iter_json_array(path, text, start + 1)
    else:
        yield from _iter_json_lines(path, text)


def _iter_json_array(path: Path, text: str, pos: int) -> Iterator[tuple[int, dict]]:
    # Decode element by element rather than json.loads(text) so each record keeps its line number.
    decoder = json.JSONDecoder()
    while True:
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise FellrecError(f"malformed JSON: {e.msg}", path, text.count("\n", 0, e.pos) + 1) from None
        yield line, _as_object(record, path, line)
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            raise FellrecError("malformed JSON array: expected ',' or ']'", path, text.count("\n", 0, pos) + 1)


def _iter_json_lines(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise FellrecError(f"malformed JSON line: {e.msg}", path, line_no) from None
        yield line_no, _as_object(record, path, line_no)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _as_object(record: object, path: Path, line: int) -> dict:
    if not isinstance(record, dict):
        raise FellrecError(f"expected a JSON object, got {type(record).__name__}", path, line)
    return record


def iter_table_rows(path: Path, required: list[str], delimiter: str = ",") -> Iterator[tuple[int, dict[str, str]]]:
    """Yield `(line, row)` of a delimited file with a header holding at least the `required` columns.

    Header names may carry a RecBole type suffix (`user_id:token`); it is stripped.
    """
    with open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise FellrecError("empty file, expected a header line", path, 1)
        names = [h.split(":")[0].strip() for h in header]
        missing = [c for c in required if c not in names]
        if missing:
            raise FellrecError(f"header lacks column(s) {missing}; found {names}", path, 1)
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(names):
                raise FellrecError(f"expected {len(names)} fields ({delimiter!r}-separated), got {len(row)}", path, line)
            yield line, dict(zip(names, row))


def parse_timestamp(value: str, path: Path, line: int) -> float:
    """A numeric timestamp, or an error naming the place."""
    try:
        return float(value)
    except ValueError:
        raise FellrecError(f"timestamp {value!r} is not a number", path, line) from None
