# Copyright 2026 The lavit-hf Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
V* Bench: bench_samples has no V* rows, so these tests write rows in the two official layouts of
`craigwu/vstar_bench` (`test_questions.jsonl`; per-category image + json, as `vstar_bench_eval.py` reads them).
"""

import json
import random

import evaluate
import pytest
from PIL import Image

from evaluate_metrics import load_benchmark, module_path


INSTRUCTION = "Answer with the option's letter from the given choices directly."
# (category, question, options, label) in the format of test_questions.jsonl.
QUESTIONS = [
    ("direct_attributes", "What is the material of the glove?", ["rubber", "cotton", "kevlar", "leather"], "A"),
    ("direct_attributes", "What is the color of the dustpan?", ["purple", "red", "blue", "white"], "C"),
    ("direct_attributes", "What is the color of the umbrella?", ["green", "black", "yellow", "pink"], "D"),
    ("relative_position", "Is the cat on the left or right side of the bicycle?", ["left", "right"], "B"),
    ("relative_position", "Is the bottle above or below the clock?", ["above", "below"], "A"),
]


def _write_jsonl_layout(root, with_images=True):
    lines = []
    for number, (category, question, options, label) in enumerate(QUESTIONS):
        image = f"{category}/sa_{number}.jpg"
        if with_images:
            (root / category).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32 + number, 24), (10 * number, 0, 0)).save(root / image)
        lettered = "\n".join(f"({chr(65 + i)}) {option}" for i, option in enumerate(options))
        row = {"image": image, "text": f"{question}\n{lettered}\n{INSTRUCTION}", "category": category}
        lines.append(json.dumps({**row, "question_id": number, "label": label}))
    (root / "test_questions.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def vstar():
    return evaluate.load(module_path("vstar"))


@pytest.fixture
def rows(tmp_path):
    _write_jsonl_layout(tmp_path)
    return load_benchmark("vstar", tmp_path)


def test_loader_reads_test_questions_jsonl(rows):
    assert rows["id"] == ["0", "1", "2", "3", "4"] and rows["answer"] == ["A", "C", "D", "B", "A"]
    assert rows[1]["options"] == ["purple", "red", "blue", "white"]
    assert rows[3]["question"] == (
        "Is the cat on the left or right side of the bicycle?\n(A) left\n(B) right\n" + INSTRUCTION
    )
    assert rows[2]["image"].size == (34, 24) and rows["category"].count("relative_position") == 2


def test_loader_reads_the_per_category_folders(tmp_path):
    for category, stem, question, options in [
        ("direct_attributes", "sa_4690", "What is the material of the glove?", ["rubber", "cotton", "kevlar"]),
        ("relative_position", "sa_17", "Is the cat on the left or right side of the bicycle?", ["left", "right"]),
    ]:
        (tmp_path / category).mkdir()
        Image.new("RGB", (16, 16)).save(tmp_path / category / f"{stem}.jpg")
        annotation = {"target_object": ["glove"], "bbox": [[1, 2, 3, 4]], "question": question, "options": options}
        (tmp_path / category / f"{stem}.json").write_text(json.dumps(annotation))
    rows = load_benchmark("vstar", tmp_path)
    assert rows["id"] == ["direct_attributes/sa_4690", "relative_position/sa_17"]
    # vstar_bench_eval.py counts option 0 as the correct one.
    assert rows["answer"] == ["A", "A"] and rows[1]["options"] == ["left", "right"]
    assert (
        rows[0]["question"] == f"What is the material of the glove?\n(A) rubber\n(B) cotton\n(C) kevlar\n{INSTRUCTION}"
    )


def test_loader_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="No V\\* Bench under .*test_questions.jsonl"):
        load_benchmark("vstar", tmp_path)
    _write_jsonl_layout(tmp_path, with_images=False)
    with pytest.raises(
        FileNotFoundError, match="Image of V\\* question_id '0' not found: .*direct_attributes/sa_0.jpg"
    ):
        load_benchmark("vstar", tmp_path)
    assert load_benchmark("vstar", tmp_path, require_images=False)["image"] == [None] * 5
    (tmp_path / "test_questions.jsonl").write_text(json.dumps({"question_id": 7, "image": "x.jpg", "text": "Q?"}))
    with pytest.raises(ValueError, match="test_questions.jsonl line 1 has no 'category', 'label' field"):
        load_benchmark("vstar", tmp_path, require_images=False)


def test_scores_per_category_and_over_questions(vstar, rows):
    references = rows.remove_columns(["image", "question"]).to_list()
    answers = {"0": "(A) rubber", "1": "The dustpan is blue, so the answer is C.", "2": "Yes", "3": "right", "4": "B"}
    predictions = [{"id": row_id, "prediction": answer} for row_id, answer in answers.items()]
    results = vstar.compute(predictions=predictions, references=references, macro=True)
    assert results == {
        "accuracy": 3 / 5,
        "accuracy_direct_attributes": 2 / 3,
        "accuracy_relative_position": 1 / 2,
        "macro_accuracy": (2 / 3 + 1 / 2) / 2,
        "num_questions": 5,
        "unparsed": 1,
    }
    shuffled = random.Random(0).sample(predictions, len(predictions))
    assert vstar.compute(predictions=shuffled, references=references, macro=True) == results


@pytest.mark.parametrize(
    ("answer", "correct", "unparsed"),
    [
        ("C", True, 0),
        ("(c)", True, 0),
        ("blue", True, 0),
        ("Looking closely at the dustpan in the corner, it is blue.\n\nAnswer: C", True, 0),
        ("The answer is (B).", False, 0),
        ("A blue dustpan.", False, 1),
        ("I see a dustpan.", False, 1),
        ("No", False, 1),
        ("(B) or (C)", False, 1),
        ("The dustpan is blue.", False, 1),
        ("", False, 1),
    ],
)
def test_extraction_on_a_four_option_question(vstar, answer, correct, unparsed):
    references = [{"id": "1", "answer": "C", "category": "direct_attributes", "options": QUESTIONS[1][2]}]
    results = vstar.compute(predictions=[{"id": "1", "prediction": answer}], references=references)
    assert (results["accuracy"], results["unparsed"]) == (float(correct), unparsed)
