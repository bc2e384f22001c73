"""Readers that turn each supported input format into an `Interactions` table.

`bigrec_json` is the exception: its files are already split into prompts, so it has its own module (bigrec.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tqdm import tqdm

from fellrec.config import DataArgs
from fellrec.data.records import iter_json_records, iter_table_rows, parse_timestamp, require_file
from fellrec.data.table import Interactions
from fellrec.errors import FellrecError


def movielens100k_dir() -> Path:
    """Where the installed recbole wheel keeps MovieLens-100K (found without importing recbole)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        raise FellrecError("MovieLens-100K ships in the recbole wheel: run `pip install --no-deps recbole==1.2.1`")
    return Path(spec.origin).parent / "dataset_example" / "ml-100k"


def read_movielens100k(args: DataArgs) -> Interactions:
    """MovieLens-100K: every rating is an interaction; titles get their release year: "Toy Story (1995)"."""
    root = Path(args.path) if args.path else movielens100k_dir()
    item_path = require_file(root / "ml-100k.item", "MovieLens-100K item file")
    inter_path = require_file(root / "ml-100k.inter", "MovieLens-100K interaction file")
    titles, genres = {}, {}
    for line, row in iter_table_rows(item_path, ["item_id", "movie_title"], delimiter="\t"):
        title = row["movie_title"].strip()
        if not title:
            raise FellrecError(f"item {row['item_id']} has no title", item_path, line)
        year = row.get("release_year", "").strip()
        titles[row["item_id"]] = f"{title} ({year})" if year else title
        genres[row["item_id"]] = row.get("class", "").split()
    return _read_interaction_rows(inter_path, "user_id", "item_id", "\t", titles, genres)


def read_csv(args: DataArgs) -> Interactions:
    """Your own data: `interactions.csv` (user,item,timestamp) and `items.csv` (item,title[,genres])."""
    root = _data_dir(args)
    items_path = require_file(root / args.items_file, "items CSV")
    inter_path = require_file(root / args.interactions_file, "interactions CSV")
    titles, genres = {}, {}
    for line, row in iter_table_rows(items_path, ["item", "title"]):
        title = row["title"].strip()
        if not title:
            raise FellrecError(f"item {row['item']!r} has no title", items_path, line)
        if row["item"] in titles:
            raise FellrecError(f"item {row['item']!r} is listed twice", items_path, line)
        titles[row["item"]] = title
        genres[row["item"]] = [g for g in row.get("genres", "").split("|") if g]
    return _read_interaction_rows(inter_path, "user", "item", ",", titles, genres)


def _read_interaction_rows(path: Path, user_col: str, item_col: str, delimiter: str,
                           titles: dict[str, str], genres: dict[str, list[str]]) -> Interactions:
    users, items, stamps = [], [], []
    for line, row in iter_table_rows(path, [user_col, item_col, "timestamp"], delimiter=delimiter):
        item = row[item_col].strip()
        if item not in titles:
            raise FellrecError(f"unknown item {item!r} (not in the item table)", path, line)
        users.append(row[user_col].strip())
        items.append(item)
        stamps.append(parse_timestamp(row["timestamp"], path, line))
    if not users:
        raise FellrecError("no interactions", path)
    return Interactions(users, items, stamps, titles, {i: g for i, g in genres.items() if g})


def read_amazon2018(args: DataArgs) -> Interactions:
    """Raw Amazon 2018 reviews + metadata with the paper's preprocessing: items without a title are dropped,
    repeated (user, item) pairs keep their first review, then the `core`-core filter runs until stable."""
    root = _data_dir(args)
    meta_path = require_file(root / args.meta_file, "Amazon metadata file")
    reviews_path = require_file(root / args.reviews_file, "Amazon reviews file")
    titles, genres = _read_amazon_meta(meta_path)
    first_seen: dict[tuple[str, str], float] = {}
    for line, record in tqdm(iter_json_records(reviews_path), desc="reading reviews", unit=" reviews",
                             leave=False):
        user, item, ts = (_field(record, key, reviews_path, line) for key in ("reviewerID", "asin", "unixReviewTime"))
        if item not in titles:
            continue
        ts = parse_timestamp(str(ts), reviews_path, line)
        key = (str(user), str(item))
        first_seen[key] = min(ts, first_seen.get(key, ts))
    pairs = _k_core(first_seen, args.core)
    if not pairs:
        raise FellrecError(f"no interactions survive the {args.core}-core filter", reviews_path)
    kept_items = {item for _, item in pairs}
    return Interactions([u for u, _ in pairs], [i for _, i in pairs], [first_seen[p] for p in pairs],
                        {i: t for i, t in titles.items() if i in kept_items},
                        {i: g for i, g in genres.items() if i in kept_items and g})


def _read_amazon_meta(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    titles, genres = {}, {}
    for line, record in iter_json_records(path):
        asin = _field(record, "asin", path, line)
        title = " ".join(str(record.get("title") or "").split())
        # Metadata pages without a usable title cannot be named in a prompt (BIGRec drops them too).
        if title and "<" not in title:
            titles[str(asin)] = title
            category = record.get("category") or []
            genres[str(asin)] = [str(c) for c in category[1:2]] if isinstance(category, list) else []
    return titles, genres


def _field(record: dict, key: str, path: Path, line: int):
    if key not in record:
        raise FellrecError(f"record has no {key!r} field (keys: {sorted(record)[:8]})", path, line)
    return record[key]


def _k_core(pairs: dict[tuple[str, str], float], core: int) -> list[tuple[str, str]]:
    """Drop users and items with fewer than `core` interactions, repeatedly, until none is left to drop."""
    kept = list(pairs)
    while True:
        user_count, item_count = {}, {}
        for u, i in kept:
            user_count[u] = user_count.get(u, 0) + 1
            item_count[i] = item_count.get(i, 0) + 1
        survivors = [(u, i) for u, i in kept if user_count[u] >= core and item_count[i] >= core]
        if len(survivors) == len(kept):
            return kept
        kept = survivors


def _data_dir(args: DataArgs) -> Path:
    if not args.path:
        raise FellrecError(f"data.path must name the directory holding the {args.source} files")
    root = Path(args.path).expanduser()
    if not root.is_dir():
        raise FellrecError(f"data directory not found (data.path for source {args.source})", root)
    return root


