"""BIGRec/FELLRec JSON records: prompts that are already split into train/valid/test files.

A record holds `instruction`, `input` (`... before: "T1", "T2", ...`), `output` (one or several quoted titles) and
`user`. `id2name.txt` maps item ids to titles (`id<TAB>title` per line); every title in a record must be in it.
"""

from __future__ import annotations

import re
from pathlib import Path

from fellrec.config import DataArgs
from fellrec.data.records import iter_json_records, require_file
from fellrec.data.table import RecData, Sample
from fellrec.errors import FellrecError

_NEWLINE_BETWEEN_TITLES = re.compile(r'"\s*\n\s*"')


def read_bigrec_json(args: DataArgs) -> RecData:
    if not args.path:
        raise FellrecError("data.path must name the directory holding the BIGRec JSON files and id2name.txt")
    root = Path(args.path).expanduser()
    titles, notes = read_id2name(require_file(root / args.titles_file, "title file (id<TAB>title)"))
    item_of = {}
    for item, title in titles.items():
        item_of.setdefault(title, item)
    splits = {name: read_records(require_file(root / file, f"{name} records"), item_of, args.max_history)
              for name, file in (("train", args.train_file), ("valid", args.valid_file), ("test", args.test_file))}
    every = [s for samples in splits.values() for s in samples]
    # Histories precede their targets in time, so they (plus training targets) are the training-period evidence.
    pairs = {(s.user, i): None for s in every for i in s.history}
    pairs.update({(s.user, i): None for s in splits["train"] for i in s.targets})
    seen = {(s.user, i) for s in every for i in s.history + s.targets}
    return RecData(source="bigrec_json", train=splits["train"], valid=splits["valid"], test=splits["test"],
                   titles=titles, genres={}, train_pairs=list(pairs), num_users=len({s.user for s in every}),
                   num_interactions=len(seen), notes=notes)


def read_id2name(path: Path) -> tuple[dict[str, str], list[str]]:
    titles: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            item, sep, title = line.rstrip("\n").partition("\t")
            if not sep or not item.strip():
                raise FellrecError("expected `id<TAB>title`", path, line_no)
            if not title.strip():
                raise FellrecError(f"item {item!r} has no title", path, line_no)
            titles[item.strip()] = title.strip()
    if not titles:
        raise FellrecError("no titles", path)
    duplicates = len(titles) - len(set(titles.values()))
    notes = [f"{duplicates} titles in {path.name} name several items; a title maps to its first id"] if duplicates else []
    return titles, notes


def read_records(path: Path, item_of: dict[str, str], max_history: int) -> list[Sample]:
    samples = []
    for line, record in iter_json_records(path):
        for key in ("input", "output", "user"):
            if key not in record:
                raise FellrecError(f"record has no {key!r} field", path, line)
        history = _items(parse_titles(_after_colon(record["input"]), path, line, "input"), item_of, path, line)
        targets = _items(parse_titles(record["output"], path, line, "output"), item_of, path, line)
        samples.append(Sample(str(record["user"]), tuple(history[-max_history:]), tuple(dict.fromkeys(targets))))
    return samples


def _after_colon(text: str) -> str:
    # The sentence before the titles ("The user has played the following video games before:") has no quotes.
    start = text.find('"')
    return text[start:] if start >= 0 else ""


def parse_titles(text: object, path: Path, line: int, key: str) -> list[str]:
    """The quoted titles in `"T1", "T2"` (or one per line). Splitting stays naive here; `_items` rejoins titles
    that themselves contain `", "`."""
    text = str(text).strip()
    if len(text) < 2 or not (text.startswith('"') and text.endswith('"')):
        raise FellrecError(f"{key} holds no quoted title: {text[:80]!r}", path, line)
    inner = _NEWLINE_BETWEEN_TITLES.sub('", "', text)[1:-1]
    return [piece.strip() for piece in inner.split('", "')]


def _items(pieces: list[str], item_of: dict[str, str], path: Path, line: int) -> list[str]:
    if any(not p for p in pieces):
        raise FellrecError("record has an empty title", path, line)
    items, pending = [], None
    for piece in pieces:
        pending = piece if pending is None else f'{pending}", "{piece}'
        if pending in item_of:
            items.append(item_of[pending])
            pending = None
    if pending is not None:
        raise FellrecError(f"unknown item title {pending[:80]!r} (not in the title file)", path, line)
    return items
