"""Append-only JSONL files (predictions, failures, filtered samples) survive a torn last line and name bad lines."""

import json

import pytest

from lavit_hf.jsonl import JsonlAppender, read_jsonl


def test_a_torn_last_line_is_dropped_and_the_next_append_starts_a_fresh_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "predic')
    assert read_jsonl(path) == [{"id": "a"}]
    with JsonlAppender(path) as out:
        out.write({"id": "b"}, {"id": "c"})
    assert read_jsonl(path) == [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    assert path.read_text().count("\n") == 3


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n" + json.dumps({"id": "b"}))
    with JsonlAppender(path) as out:
        out.write({"id": "c"})
    assert [record["id"] for record in read_jsonl(path)] == ["a", "b", "c"]


@pytest.mark.parametrize("bad", ["not json", "[1, 2]"])
def test_a_bad_line_before_the_last_names_the_file_and_line(tmp_path, bad):
    path = tmp_path / "failures.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n" + bad + "\n" + json.dumps({"id": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"failures\.jsonl, line 2"):
        read_jsonl(path)


def test_a_missing_file_reads_as_empty(tmp_path):
    assert read_jsonl(tmp_path / "absent.jsonl") == []
