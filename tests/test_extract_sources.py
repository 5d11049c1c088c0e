"""Source readers (docs/method.md section 5) and the box filter's padded-square geometry."""

import json
import re

import datasets
import pytest
from PIL import Image

from datasets_scripts.sources import RecordFormatError, load_image, read_source
from lavit_hf.grids import box_in_image, box_mass


def viscot4(qid, image="a.png", box="[0.1, 0.2, 0.5, 0.6]"):
    return {
        "question_id": qid, "image": [image, f"{image}###[3, 4, 50, 60]"], "dataset": "gqa", "split": "train",
        "conversations": [
            {"from": "human", "value": "<image>\nIs the cup red? Please provide the bounding box coordinate of the "
             "region that can help you answer the question better."},
            {"from": "gpt", "value": box},
            {"from": "human", "value": "<image>"},
            {"from": "gpt", "value": "Yes, it is red."},
        ],
    }


def viscot2(qid, bboxes=([0.1, 0.1, 0.3, 0.3], [0.2, 0.0, 0.4, 0.2])):
    return {
        "question_id": qid, "image": ["b.png"], "bboxes": list(bboxes),
        "conversations": [{"from": "human", "value": "<image>\nWhat color?"},
                          {"from": "gpt", "value": "<answer>Blue</answer>"}],
    }


def test_visual_cot_both_formats(tmp_path):
    path = tmp_path / "viscot.json"
    path.write_text(json.dumps([viscot4("q1"), viscot2(7)]))
    first, second = read_source(path, image_root=tmp_path)
    assert (first.question, first.answer, first.bbox) == ("Is the cup red?", "Yes, it is red.", [0.1, 0.2, 0.5, 0.6])
    assert first.image_path == str(tmp_path / "a.png") and first.key == "gqa/q1" and first.source == "gqa"
    # 2-turn variant: answer from <answer>, several boxes -> the enclosing box, source from the file name
    assert (second.question, second.answer, second.bbox) == ("What color?", "Blue", [0.1, 0.0, 0.4, 0.3])
    assert second.key == "viscot/7" and second.index == 1


def test_plain_jsonl_and_dataset_sources(tmp_path):
    rows = [{"image": "a.png", "question": "Q?", "answer": "A", "question_id": "x"},
            {"image": "b.png", "question": "Q2?", "answer": ["A2", "alt"]}]
    path = tmp_path / "plain.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    a, b = read_source(path, image_root=tmp_path)
    assert (a.key, a.answer, b.key, b.answer, b.bbox) == ("plain/x", "A", "plain/1", "A2", [])
    image = Image.new("RGB", (30, 20), (1, 2, 3))
    ds = datasets.Dataset.from_dict({"img": [image], "q": ["Q?"], "a": ["A"]}, features=datasets.Features(
        {"img": datasets.Image(), "q": datasets.Value("string"), "a": datasets.Value("string")}))
    from datasets_scripts.sources import ColumnNames

    (record,) = read_source(ds, source_name="mine", columns=ColumnNames(image="img", question="q", answer="a"))
    assert record.key == "mine/0" and load_image(record).size == (30, 20)
    ds.save_to_disk(str(tmp_path / "saved"))
    (saved,) = read_source(tmp_path / "saved", columns=ColumnNames(image="img", question="q", answer="a"))
    assert saved.source == "saved" and load_image(saved).getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"question_id": "bad3", "image": ["a.png"], "conversations": [{"from": "human", "value": "q"}] * 3},
         r"record 1 \(question_id='bad3'\).*4 turns"),
        ({"question_id": "nob", "image": ["a.png"], "conversations": viscot2(0)["conversations"]},
         r"record 1 \(question_id='nob'\).*bboxes"),
        ({"question_id": "box", **{k: v for k, v in viscot4("box", box="[1, 2]").items() if k != "question_id"}},
         r"record 1 \(question_id='box'\).*\[x1, y1, x2, y2\]"),
        ({"id": 5, "picture": "a.png", "text": "hi"}, r"record 1 \(question_id=5\).*missing \['image', 'question'"),
    ],
)
def test_malformed_record_names_the_record(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(viscot4("ok")) + "\n" + json.dumps(record))
    with pytest.raises(RecordFormatError, match=message):
        read_source(path, strict=True)
    # By default the record is kept, with its index and the same message, for the extractor to count as a failure.
    ok, bad = read_source(path)
    assert ok.error is None and ok.question == "Is the cup red?"
    assert bad.index == 1 and re.search(message, bad.error)


def test_repeated_question_ids_get_unique_keys(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text(json.dumps([viscot4("q"), viscot4("q")]))
    assert [r.key for r in read_source(path)] == ["gqa/q", "gqa/q#1"]


def test_box_is_mapped_from_the_padded_square():
    # A 200x100 image sits in the middle of a 200x200 square: y in [0.25, 0.75] of the square is the whole image.
    assert box_in_image([0.0, 0.25, 1.0, 0.75], (200, 100)) == [0.0, 0.0, 1.0, 1.0]
    assert box_in_image([0.0, 0.25, 0.5, 0.5], (200, 100)) == [0.0, 0.0, 0.5, 0.5]
    assert box_in_image([0.0, 0.0, 0.5, 0.5], (200, 100), "square-topleft") == [0.0, 0.0, 0.5, 1.0]
    assert box_in_image([0.1, 0.2, 0.3, 0.4], (200, 100), "image") == [0.1, 0.2, 0.3, 0.4]


def test_box_mass_on_a_non_square_image():
    # grid 2 x 4 over a 200x100 image; all the mass on the top-left token (row 0, column 0)
    traj = [1.0] + [0.0] * 7
    top_left_in_square = [0.0, 0.25, 0.25, 0.5]  # the image's top-left quarter-width, top half, in the square frame
    assert box_mass(traj, (2, 4), (200, 100), top_left_in_square) == pytest.approx(1.0)
    # read naively as image-normalised, the same numbers would miss the token's half
    assert box_mass(traj, (2, 4), (200, 100), top_left_in_square, frame="image") == pytest.approx(0.5)
    uniform = [1 / 8] * 8
    assert box_mass(uniform, (2, 4), (200, 100), [0.0, 0.25, 0.5, 0.75]) == pytest.approx(0.5)
