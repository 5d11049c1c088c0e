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
"""MMStar: the official score of the LLaVA-NeXT-Yi-34B submission released with MMStar, and the loader's layouts."""

import base64
import io
import json
import random

import datasets
import evaluate
import pytest
from PIL import Image

from evaluate_metrics import load_benchmark, module_path


@pytest.fixture(scope="module")
def bench(bench_samples):
    return bench_samples / "mmstar"


@pytest.fixture(scope="module")
def submission_file(bench):
    return bench / "mmstar_1500_from_llava_next_yi_34b_submission.jsonl"


@pytest.fixture(scope="module")
def mmstar():
    return evaluate.load(module_path("mmstar"))


@pytest.fixture(scope="module")
def submission(submission_file):
    return [json.loads(line) for line in submission_file.open()]


@pytest.fixture(scope="module")
def references(submission_file):
    rows = load_benchmark("mmstar", submission_file, require_images=False)
    return rows.remove_columns(["image", "question"]).to_list()


def _predictions(submission):
    return [{"id": str(row["index"]), "prediction": row["prediction"]} for row in submission]


def test_submission_reproduces_the_official_score(mmstar, submission, references):
    results = mmstar.compute(predictions=_predictions(submission), references=references)
    # MMStar publishes 52.1 for LLaVA-NeXT-Yi-34B; its own rule on its own submission gives 781 / 1500.
    assert results["accuracy"] == 781 / 1500 and round(results["accuracy"], 5) == 0.52067
    # lmms-eval's "average": the mean of the 18 subcategory accuracies.
    assert round(results["l2_macro_accuracy"], 5) == 0.52718
    l2_keys = [key for key in results if key.startswith("accuracy_") and "/" in key]
    category_keys = [key for key in results if key.startswith("accuracy_") and "/" not in key]
    assert len(l2_keys) == 18 and len(category_keys) == 6
    assert results["l2_macro_accuracy"] == pytest.approx(sum(results[key] for key in l2_keys) / 18)
    # Every category has 250 questions, so the mean over categories is the accuracy over questions.
    assert results["category_macro_accuracy"] == pytest.approx(results["accuracy"])
    assert results["num_questions"] == 1500 and results["unparsed"] == 0


def test_subcategory_scores_are_computed_within_each_group(mmstar, submission, references):
    results = mmstar.compute(predictions=_predictions(submission), references=references)
    emotion = [row for row in submission if row["l2_category"] == "image emotion"]
    expected = sum(row["prediction"].strip()[0] == row["answer"] for row in emotion) / len(emotion)
    assert len(emotion) == 31 and results["accuracy_coarse perception/image emotion"] == expected


def test_score_does_not_depend_on_the_order_of_predictions(mmstar, submission, references):
    predictions = _predictions(submission)
    shuffled = random.Random(0).sample(predictions, len(predictions))
    assert mmstar.compute(predictions=shuffled, references=references) == mmstar.compute(
        predictions=predictions, references=references
    )


@pytest.mark.parametrize(
    ("answer", "official", "strict"),
    [
        ("B", (1.0, 0), (1.0, 0)),
        ("(b) 0.21", (1.0, 0), (1.0, 0)),
        ("Option B: museum", (1.0, 0), (1.0, 0)),
        ("The answer is b", (1.0, 0), (1.0, 0)),
        ("\n B: neither; only the first", (1.0, 0), (1.0, 0)),
        # The official rule reads only the start, so it takes a word's first letter and ignores a conclusion.
        ("Blue is the colour of the car.", (1.0, 0), (0.0, 1)),
        ("Looking at the chart, the answer is (B).", (0.0, 1), (1.0, 0)),
        ("A cat", (0.0, 0), (0.0, 1)),
        ("Yes", (0.0, 1), (0.0, 1)),
        ("", (0.0, 1), (0.0, 1)),
    ],
)
def test_official_and_strict_extraction(mmstar, answer, official, strict):
    references = [{"id": "0", "answer": "B", "category": "math", "l2_category": "geometry", "options": []}]
    predictions = [{"id": "0", "prediction": answer}]
    for extraction, expected in (("official", official), ("strict", strict)):
        results = mmstar.compute(predictions=predictions, references=references, extraction=extraction)
        assert (results["accuracy"], results["unparsed"]) == expected, extraction


def test_strict_extraction_tells_apart_options_that_differ_in_a_sign_or_punctuation(mmstar, references):
    by_id = {reference["id"]: reference for reference in references}
    # Real rows: 1245 (-0.21, 0.21, 21, 0; answer B), 1406 (0.00680 mm/mm, -0.00680 mm/mm, ...; answer D) and
    # 1236 (9, 12, 18, 18; answer C: its text names two options).
    assert by_id["1245"]["options"] == ["-0.21", "0.21", "21", "0"] and by_id["1245"]["answer"] == "B"
    assert by_id["1236"]["options"] == ["9", "12", "18", "18"] and by_id["1236"]["answer"] == "C"
    answers = {
        "1245": ("0.21", True),
        "1406": ("The answer is 0.0281*10^(-3) mm/mm.", True),
        "1236": ("18", False),
    }
    for row_id, (answer, correct) in answers.items():
        results = mmstar.compute(
            predictions=[{"id": row_id, "prediction": answer}], references=[by_id[row_id]], extraction="strict"
        )
        assert (results["accuracy"], results["unparsed"]) == (float(correct), int(not correct)), row_id
    wrong = mmstar.compute(
        predictions=[{"id": "1245", "prediction": "The answer is -0.21."}],
        references=[by_id["1245"]],
        extraction="strict",
    )
    assert (wrong["accuracy"], wrong["unparsed"]) == (0.0, 0)


def test_loader_reads_the_xlsx_and_jsonl_submissions_alike(bench, submission_file):
    from_xlsx = load_benchmark("mmstar", bench / "llava_next_yi_34b_MMStar.xlsx", require_images=False)
    from_jsonl = load_benchmark("mmstar", submission_file, require_images=False)
    assert from_jsonl.num_rows == 1500
    assert from_xlsx.remove_columns("question").to_list() == from_jsonl.remove_columns("question").to_list()
    # The jsonl was converted from the sheet's XML, which escapes a literal "_x000D_" (2 MathVista questions).
    jsonl_questions = [question.replace("_x005F_x000D_", "_x000D_") for question in from_jsonl["question"]]
    assert from_xlsx["question"] == jsonl_questions
    assert from_jsonl[0]["options"] == [
        "The suitcase is on the book.",
        "The suitcase is beneath the cat.",
        "The suitcase is beneath the bed.",
        "The suitcase is beneath the book.",
    ]
    # MathVista questions list "Choices:" one per line instead of "Options: A: ..., B: ...".
    assert sum(len(options) == 4 for options in from_jsonl["options"]) == 1499
    with pytest.raises(ValueError, match="MMStar index 0 in .*llava_next_yi_34b_MMStar.xlsx has no 'image' field"):
        load_benchmark("mmstar", bench / "llava_next_yi_34b_MMStar.xlsx")


def _image_bytes(color):
    buffer = io.BytesIO()
    Image.new("RGB", (12, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_loader_reads_the_hub_parquet_and_a_vlmevalkit_tsv(tmp_path, submission):
    # The first 20 real rows in the columns of Lin-Chen/MMStar's mmstar.parquet, with a stand-in image each.
    rows = [
        {**{key: row[key] for key in ("index", "question", "answer", "category", "l2_category")}, "meta_info": {}}
        for row in submission[:20]
    ]
    images = [{"bytes": _image_bytes((row["index"], 0, 0)), "path": None} for row in rows]
    features = datasets.Features(
        {
            "index": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "image": datasets.Image(),
            "answer": datasets.Value("string"),
            "category": datasets.Value("string"),
            "l2_category": datasets.Value("string"),
            "meta_info": {"source": datasets.Value("string")},
        }
    )
    table = [{**row, "image": image, "meta_info": {"source": "test"}} for row, image in zip(rows, images, strict=True)]
    datasets.Dataset.from_list(table, features=features).to_parquet(tmp_path / "mmstar.parquet")
    from_parquet = load_benchmark("mmstar", tmp_path)
    assert from_parquet["id"] == [str(row["index"]) for row in rows]
    assert from_parquet[3]["image"].getpixel((0, 0)) == (3, 0, 0)
    tsv = tmp_path / "MMStar.tsv"
    lines = ["index\tquestion\timage\tanswer\tcategory\tl2_category"]
    for row, image in zip(rows[:3], images[:3], strict=True):
        question = row["question"].replace("\n", "\\n")
        encoded = base64.b64encode(image["bytes"]).decode()
        lines.append(
            f"{row['index']}\t{question}\t{encoded}\t{row['answer']}\t{row['category']}\t{row['l2_category']}"
        )
    tsv.write_text("\n".join(lines) + "\n")
    from_tsv = load_benchmark("mmstar", tsv)
    assert from_tsv["id"] == ["0", "1", "2"] and from_tsv[2]["image"].getpixel((0, 0)) == (2, 0, 0)
