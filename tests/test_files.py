import pytest

from fellrec.files import write_atomically


def test_replace_swaps_the_whole_directory_or_nothing(tmp_path):
    target = tmp_path / "best"
    write_atomically(target, lambda d: (d / "a.txt").write_text("old"))
    with pytest.raises(RuntimeError):
        write_atomically(target, lambda d: ((d / "a.txt").write_text("half"), (_ for _ in ()).throw(RuntimeError())),
                         replace=True)
    assert (target / "a.txt").read_text() == "old"  # an interrupted replace keeps the old content
    write_atomically(target, lambda d: (d / "b.txt").write_text("new"), replace=True)
    assert [p.name for p in target.iterdir()] == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # no partial or old directory left behind


def test_without_replace_an_existing_directory_wins(tmp_path):
    target = tmp_path / "cache"
    write_atomically(target, lambda d: (d / "a.txt").write_text("first"))
    write_atomically(target, lambda d: (d / "a.txt").write_text("second"))
    assert (target / "a.txt").read_text() == "first"
