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
"""MMVP: the loader on the bench_samples rows and images, and question and pair accuracy on their answers."""

import json
import random

import evaluate
import pytest
from PIL import Image

from evaluate_metrics import load_benchmark, module_path


CSV = "Questions_reconstructed_from_visualsketchpad.csv"


@pytest.fixture(scope="module")
def bench(bench_samples):
    return bench_samples / "mmvp"


@pytest.fixture(scope="module")
def mmvp():
    return evaluate.load(module_path("mmvp"))


@pytest.fixture(scope="module")
def rows(bench):
    return load_benchmark("mmvp", bench, questions_file=bench / CSV, images_dir=bench / "images", require_images=False)


@pytest.fixture(scope="module")
def references(rows):
    return rows.remove_columns(["image", "question"]).to_list()


@pytest.fixture(scope="module")
def gold(bench):
    # VisualSketchpad's request files, a source independent of the CSV, hold the same 300 answers.
    return json.loads((bench / "visualsketchpad_mmvp_answers.json").read_text())


def _predict(references, gold, wrong=()):
    """Free-text answers in varied formats: the gold option, except for the ids in `wrong`."""
    formats = ["{letter}", "({letter})", "The answer is ({letter}).", "{text}", "Option {upper}: {text}"]
    predictions = []
    for position, reference in enumerate(references):
        letter = gold[reference["id"]].strip("()")
        if reference["id"] in wrong:
            letter = "b" if letter == "a" else "a"
        text = reference["options"]["ab".index(letter)]
        answer = formats[position % len(formats)].format(letter=letter, upper=letter.upper(), text=text)
        predictions.append({"id": reference["id"], "prediction": answer})
    return predictions


def test_loader_reads_the_official_csv_layout(rows, gold):
    assert rows.num_rows == 300 and rows["id"][:3] == ["1", "2", "3"]
    assert rows[0]["question"] == "Are the butterfly's wings closer to being open or closed? (a) Open (b) Closed"
    assert rows[0]["options"] == ["Open", "Closed"] and rows[0]["answer"] == "(a)"
    assert dict(zip(rows["id"], rows["answer"], strict=True)) == gold
    # 150 pairs, rows 2k-1 and 2k, with opposite answers.
    pairs = {}
    for row in rows:
        pairs.setdefault(row["pair_id"], []).append((row["id"], row["answer"]))
    assert len(pairs) == 150 and pairs["50"] == [("99", "(a)"), ("100", "(b)")]
    assert all(len({answer for _, answer in members}) == 2 for members in pairs.values())


def test_loader_reads_images_and_names_a_missing_one(bench, tmp_path):
    subset = tmp_path / "Questions.csv"
    subset.write_text("".join((bench / CSV).read_text().splitlines(keepends=True)[:3]))
    rows = load_benchmark("mmvp", tmp_path, images_dir=bench / "images")
    assert rows.num_rows == 2
    for row in rows:
        with Image.open(bench / "images" / f"{row['id']}.jpg") as original:
            assert row["image"].tobytes() == original.tobytes()
    with pytest.raises(FileNotFoundError, match="MMVP Index 3 not found: .*images/3.jpg"):
        load_benchmark("mmvp", bench, questions_file=bench / CSV, images_dir=bench / "images")
    with pytest.raises(FileNotFoundError, match="MMVP questions file not found: .*Questions.csv"):
        load_benchmark("mmvp", bench)


def test_loader_names_a_missing_column_and_a_bad_row(tmp_path):
    (tmp_path / "Questions.csv").write_text("Index,Question,Options\n1,Q?,(a) x (b) y\n")
    with pytest.raises(ValueError, match=r"no column\(s\) \['Correct Answer'\]"):
        load_benchmark("mmvp", tmp_path, require_images=False)
    (tmp_path / "Questions.csv").write_text("Index,Question,Options,Correct Answer\n1,Q?,x or y,(a)\n")
    with pytest.raises(ValueError, match="line 2 \\(Index 1\\): cannot read the options"):
        load_benchmark("mmvp", tmp_path, require_images=False)


def test_gold_answers_in_free_text_score_one(mmvp, references, gold):
    results = mmvp.compute(predictions=_predict(references, gold), references=references)
    assert results == {"accuracy": 1.0, "pair_accuracy": 1.0, "num_questions": 300, "num_pairs": 150, "unparsed": 0}


def test_a_pair_counts_only_when_both_questions_are_right(mmvp, references, gold):
    # One wrong answer in pair 1, both wrong in pair 2, one wrong in pair 3: 4 wrong questions, 3 wrong pairs.
    results = mmvp.compute(predictions=_predict(references, gold, wrong={"1", "3", "4", "6"}), references=references)
    assert results["accuracy"] == 296 / 300 and results["pair_accuracy"] == 147 / 150


def test_score_does_not_depend_on_the_order_of_predictions(mmvp, references, gold):
    predictions = _predict(references, gold, wrong={"7", "100"})
    shuffled = random.Random(0).sample(predictions, len(predictions))
    assert mmvp.compute(predictions=shuffled, references=references) == mmvp.compute(
        predictions=predictions, references=references
    )


@pytest.mark.parametrize(
    ("answer", "correct", "unparsed"),
    [
        ("(b)", True, 0),
        ("B", True, 0),
        ("closed", True, 0),
        ("The wings are folded against the body.\n\nSo the answer is (b) Closed.", True, 0),
        ("(a) Open", False, 0),
        ("Yes", False, 1),
        ("A butterfly rests on a leaf.", False, 1),
        ("(a) or (b)", False, 1),
        ("", False, 1),
    ],
)
def test_extraction_on_an_mmvp_question(mmvp, answer, correct, unparsed):
    references = [
        {"id": "1", "answer": "(a)", "pair_id": "1", "options": ["Open", "Closed"]},
        {"id": "2", "answer": "(b)", "pair_id": "1", "options": ["Open", "Closed"]},
    ]
    predictions = [{"id": "1", "prediction": "(a)"}, {"id": "2", "prediction": answer}]
    results = mmvp.compute(predictions=predictions, references=references)
    assert results["accuracy"] == (1.0 if correct else 0.5) and results["unparsed"] == unparsed
    assert results["pair_accuracy"] == float(correct)


def test_options_that_differ_only_in_punctuation_are_told_apart(mmvp, references):
    # Rows 201/202: options '"Happy Easter"' and '"Happy Easter!"', answers (a) and (b).
    pair = [reference for reference in references if reference["id"] in ("201", "202")]
    assert [reference["options"] for reference in pair] == [['"Happy Easter"', '"Happy Easter!"']] * 2
    assert [reference["answer"] for reference in pair] == ["(a)", "(b)"]

    def score(first, second):
        predictions = [{"id": "201", "prediction": first}, {"id": "202", "prediction": second}]
        return mmvp.compute(predictions=predictions, references=pair)

    both_right = {"accuracy": 1.0, "pair_accuracy": 1.0, "num_questions": 2, "num_pairs": 1, "unparsed": 0}
    assert score("a", "b") == both_right
    # The option texts, as written or without their quotes, choose as the letters do.
    assert score('"Happy Easter"', '"Happy Easter!"') == both_right
    assert score("Happy Easter", "Happy Easter!") == both_right
    assert score("The answer is Happy Easter!", "the answer is happy easter") == {
        **both_right, "accuracy": 0.0, "pair_accuracy": 0.0
    }
    # Once punctuation is ignored both options match: no option is chosen, and both are counted.
    assert score("happy easter.", "HAPPY EASTER?")["unparsed"] == 2


def test_a_pair_with_one_question_is_refused(mmvp):
    references = [{"id": "1", "answer": "(a)", "pair_id": "1", "options": []}]
    with pytest.raises(ValueError, match="MMVP pair '1' has 1 question"):
        mmvp.compute(predictions=[{"id": "1", "prediction": "a"}], references=references)
