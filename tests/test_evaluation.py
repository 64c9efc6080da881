"""The rows `maskfocus eval --grid` shows: the first two of each tag, in the order the tags come."""

from __future__ import annotations

from maskfocus.evaluation import grid_rows, load_rows


def test_the_grid_shows_the_first_rows_of_each_tag_of_the_benchmark():
    rows = load_rows("shapes-geneval")
    chosen = grid_rows(rows)
    tags = [rows[index]["tag"] for index in chosen]
    assert len(chosen) == 12 and sorted(set(tags)) == sorted({row["tag"] for row in rows})
    assert all(tags.count(tag) == 2 for tag in set(tags)) and chosen == sorted(chosen)
    for index in chosen:  # no earlier row of its tag was passed over
        assert sum(row["tag"] == rows[index]["tag"] for row in rows[:index]) < 2
    assert grid_rows(rows, per_tag=1) == [chosen[i] for i in range(0, 12, 2)]
