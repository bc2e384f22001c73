"""Each source reader on fixtures written by the tests, plus the real MovieLens-100K from the recbole wheel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fellrec.config import DataArgs
from fellrec.data.bigrec import read_bigrec_json
from fellrec.data.records import iter_json_records
from fellrec.data.sources import read_amazon2018, read_csv, read_movielens100k
from fellrec.errors import FellrecError


def test_movielens100k_from_the_recbole_wheel():
    table = read_movielens100k(DataArgs())
    assert (len(set(table.users)), len(table.titles), len(table)) == (943, 1682, 100000)
    assert table.titles["1"] == "Toy Story (1995)"
    assert table.genres["1"] == ["Animation", "Children's", "Comedy"]


def test_csv_reads_titles_genres_and_interactions(csv_dir):
    table = read_csv(DataArgs(source="csv", path=str(csv_dir)))
    assert len(table) == 30 and len(set(table.users)) == 6
    assert table.titles["i3"] == "Title 3"
    assert table.genres["i0"] == ["Comedy", "Drama"] and table.genres["i1"] == ["Drama"]
    assert table.user_sequences()["u1"][0] == (1.0, "i1")


def test_amazon2018_preprocessing(amazon_dir):
    table = read_amazon2018(DataArgs(source="amazon2018", path=str(amazon_dir), core=5))
    # The untitled item, the rare item and the lone user are gone; a repeated review keeps its first time.
    assert sorted(set(table.users)) == [f"U{u}" for u in range(6)]
    assert sorted(table.titles) == [f"A{k}" for k in range(6)]
    assert len(table) == 36
    first = [ts for u, i, ts in zip(table.users, table.items, table.timestamps) if (u, i) == ("U0", "A0")]
    assert first == [0.0]
    assert table.genres["A1"] == ["Genre1"]


def test_amazon_core_filter_can_remove_everything(amazon_dir):
    with pytest.raises(FellrecError, match="7-core"):
        read_amazon2018(DataArgs(source="amazon2018", path=str(amazon_dir), core=7))


def test_bigrec_json_records_with_multi_target_tests(games_dir):
    data = read_bigrec_json(DataArgs(source="bigrec_json", path=str(games_dir)))
    assert (len(data.train), len(data.valid), len(data.test)) == (12, 4, 3)
    assert data.train[0].history == ("0", "1") and data.train[0].targets == ("2",)
    assert data.test[0].targets == ("4", "5")  # several quoted titles in one output
    assert data.test[2].history == ("2",)  # a title holding '", "' inside is rejoined, not split
    assert data.test[2].targets == ("0", "1", "3")
    assert data.num_users == 12 and data.num_items == 6


def test_json_array_records_keep_their_line_numbers(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('[\n  {"a": 1},\n\n  {"a": 2}\n]\n')
    assert [line for line, _ in iter_json_records(path)] == [2, 4]


# --- bad input: one clear error naming the file and, where there is one, the line ---------------------------------

def _error(func, args) -> FellrecError:
    with pytest.raises(FellrecError) as info:
        func(args)
    return info.value


def test_missing_file_is_named(games_dir):
    (games_dir / "valid.json").unlink()
    error = _error(read_bigrec_json, DataArgs(source="bigrec_json", path=str(games_dir)))
    assert error.path.endswith("valid.json") and "not found" in str(error)


def test_missing_data_directory(tmp_path):
    error = _error(read_csv, DataArgs(source="csv", path=str(tmp_path / "nowhere")))
    assert "data directory not found" in str(error) and "nowhere" in str(error)


def test_malformed_csv_line(csv_dir):
    with open(csv_dir / "interactions.csv", "a") as f:
        f.write("u9,i1\n")
    error = _error(read_csv, DataArgs(source="csv", path=str(csv_dir)))
    assert error.line == 32 and "expected 3 fields" in str(error)


def test_non_numeric_timestamp(csv_dir):
    with open(csv_dir / "interactions.csv", "a") as f:
        f.write("u9,i1,yesterday\n")
    error = _error(read_csv, DataArgs(source="csv", path=str(csv_dir)))
    assert error.line == 32 and "'yesterday'" in str(error)


def test_item_without_title(csv_dir):
    with open(csv_dir / "items.csv", "a") as f:
        f.write("i99,,Drama\n")
    error = _error(read_csv, DataArgs(source="csv", path=str(csv_dir)))
    assert error.path.endswith("items.csv") and error.line == 10 and "no title" in str(error)


def test_unknown_item_in_interactions(csv_dir):
    with open(csv_dir / "interactions.csv", "a") as f:
        f.write("u1,ghost,5\n")
    error = _error(read_csv, DataArgs(source="csv", path=str(csv_dir)))
    assert error.line == 32 and "unknown item 'ghost'" in str(error)


def test_malformed_json_record(games_dir):
    text = (games_dir / "train.json").read_text().replace('"user": 3', '"user": 3,,', 1)
    (games_dir / "train.json").write_text(text)
    error = _error(read_bigrec_json, DataArgs(source="bigrec_json", path=str(games_dir)))
    assert error.path.endswith("train.json") and "malformed JSON" in str(error)
    assert text.splitlines()[error.line - 1].strip().startswith('"user": 3')


def test_bigrec_record_without_title(games_dir):
    records = [json.loads(line) for line in (games_dir / "test.json").read_text().splitlines()]
    records[1]["output"] = "\n"
    (games_dir / "test.json").write_text("\n".join(json.dumps(r) for r in records))
    error = _error(read_bigrec_json, DataArgs(source="bigrec_json", path=str(games_dir)))
    assert error.line == 2 and "no quoted title" in str(error)


def test_bigrec_unknown_title(games_dir):
    records = json.loads((games_dir / "valid.json").read_text())
    records[2]["output"] = '"Half-Life 3"'
    (games_dir / "valid.json").write_text(json.dumps(records, indent=2))
    error = _error(read_bigrec_json, DataArgs(source="bigrec_json", path=str(games_dir)))
    assert "unknown item title 'Half-Life 3'" in str(error) and error.path.endswith("valid.json")
    assert error.line is not None and error.line > 1


def test_bigrec_record_without_user(games_dir):
    (games_dir / "valid.json").write_text(json.dumps([{"input": '"Zelda"', "output": '"Tetris"'}]))
    error = _error(read_bigrec_json, DataArgs(source="bigrec_json", path=str(games_dir)))
    assert "'user'" in str(error) and error.line == 1


def test_malformed_title_file(games_dir):
    with open(games_dir / "id2name.txt", "a") as f:
        f.write("no tab here\n")
    error = _error(read_bigrec_json, DataArgs(source="bigrec_json", path=str(games_dir)))
    assert error.line == 7 and "id<TAB>title" in str(error)


def test_amazon_review_without_required_field(amazon_dir):
    import gzip

    with gzip.open(amazon_dir / "reviews.json.gz", "at") as f:
        f.write(json.dumps({"reviewerID": "U1", "unixReviewTime": 3}) + "\n")
    error = _error(read_amazon2018, DataArgs(source="amazon2018", path=str(amazon_dir)))
    assert "'asin'" in str(error) and error.line == 41


def test_movielens_from_a_directory_missing_files(tmp_path):
    error = _error(read_movielens100k, DataArgs(path=str(tmp_path)))
    assert Path(error.path).name == "ml-100k.item"
