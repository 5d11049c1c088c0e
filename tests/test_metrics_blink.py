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
"""BLINK: official per-task figures from GPT-4o's released raw outputs, and the loader on the Hub parquet layout."""

import json
import random
import re
import sys

import datasets
import evaluate
import pytest
from PIL import Image

from evaluate_metrics import load_benchmark, module_path


# Official val accuracies of GPT-4o (bench_samples/README.md: `prediction == answer` in the released outputs).
OFFICIAL = {
    "Counting": 0.4917,
    "IQ_Test": 0.3133,
    "Relative_Depth": 0.7419,
    "Relative_Reflectance": 0.3731,
    "Spatial_Relation": 0.6923,
}
# Options per task. Only their number matters to the official rule; the texts of Counting, IQ_Test and
# Relative_Reflectance are not in bench_samples, so those references carry empty texts.
NUM_CHOICES = {"Counting": 4, "IQ_Test": 4, "Relative_Depth": 2, "Relative_Reflectance": 3, "Spatial_Relation": 2}


@pytest.fixture(scope="module")
def bench(bench_samples):
    return bench_samples / "blink"


@pytest.fixture(scope="module")
def requests(bench):
    return [json.loads(line) for line in (bench / "visualsketchpad_blink_val_requests.jsonl").open()]


def _choices(prompt):
    return re.findall(r"^\([A-E]\) (.+)$", prompt, flags=re.MULTILINE)


@pytest.fixture(scope="module")
def blink():
    return evaluate.load(module_path("blink"))


@pytest.fixture(scope="module")
def gpt4o(bench, requests):
    """The released outputs as rows `(task, item)`, with real option texts where bench_samples has them."""
    texts = {request["_idx"]: _choices(request["query"]) for request in requests}
    rows = []
    for task in OFFICIAL:
        for item in json.loads((bench / "saved_outputs_GPT4o" / f"{task}.json").read_text())["val"]:
            choices = texts.get(item["idx"], [""] * NUM_CHOICES[task])
            assert len(choices) == NUM_CHOICES[task]
            rows.append((task, item, choices))
    return rows


def _inputs(rows):
    predictions = [{"id": item["idx"], "prediction": item["full_prediction"]} for _, item, _ in rows]
    references = [
        {"id": item["idx"], "answer": item["answer"], "task": task, "choices": choices} for task, item, choices in rows
    ]
    return predictions, references


def _official_accuracy(rows, task):
    items = [item for name, item, _ in rows if name == task]
    return sum(item["prediction"] == item["answer"] for item in items) / len(items)


def test_released_answers_are_the_official_key(bench, gpt4o):
    key = json.loads((bench / "val_answers.json").read_text())
    assert all(key[item["idx"]] == item["answer"] for _, item, _ in gpt4o)
    assert {task: round(_official_accuracy(gpt4o, task), 4) for task in OFFICIAL} == OFFICIAL


def test_raw_outputs_with_the_judge_outputs_reproduce_every_official_figure(blink, gpt4o):
    predictions, references = _inputs(gpt4o)
    # The judge's outputs are the released `prediction` field; the module reads them for deferred answers only.
    judge = {item["idx"]: item["prediction"] for _, item, _ in gpt4o}
    results = blink.compute(predictions=predictions, references=references, judge_predictions=judge)
    assert {task: results[f"accuracy_{task}"] for task in OFFICIAL} == {
        task: _official_accuracy(gpt4o, task) for task in OFFICIAL
    }
    assert {task: round(results[f"accuracy_{task}"], 4) for task in OFFICIAL} == OFFICIAL
    assert results["accuracy"] == pytest.approx(sum(results[f"accuracy_{task}"] for task in OFFICIAL) / 5)
    assert results["num_questions"] == len(gpt4o) and results["deferred"] == results["judged"] == 34


def test_raw_outputs_alone_reproduce_four_of_five_figures(blink, gpt4o):
    predictions, references = _inputs(gpt4o)
    results = blink.compute(predictions=predictions, references=references)
    for task in ("IQ_Test", "Relative_Depth", "Relative_Reflectance", "Spatial_Relation"):
        assert results[f"accuracy_{task}"] == _official_accuracy(gpt4o, task), task
    # The one Counting answer the judge maps to the right option: "... is not applicable to this image."
    assert round(results["accuracy_Counting"] * 120) == round(_official_accuracy(gpt4o, "Counting") * 120) - 1
    assert results["deferred"] == 34 and results["judged"] == 0


def test_official_rule_agrees_with_every_released_prediction_it_decides(blink, gpt4o):
    official_choice = sys.modules[type(blink).__module__].official_choice
    decided = [(official_choice(item["full_prediction"], len(choices)), item) for _, item, choices in gpt4o]
    decided = [(choice, item) for choice, item in decided if choice is not None]
    assert len(decided) == len(gpt4o) - 34
    assert [item["idx"] for choice, item in decided if choice != item["prediction"]] == []


def test_deferred_answers_can_be_counted_as_wrong(blink, gpt4o):
    predictions, references = _inputs(gpt4o)
    rules = blink.compute(predictions=predictions, references=references)
    strict = blink.compute(predictions=predictions, references=references, deferred_rule="unparsed")
    assert strict["unparsed"] == strict["deferred"] == 34 and strict["micro_accuracy"] < rules["micro_accuracy"]
    with pytest.raises(ValueError, match="deferred_rule must be"):
        blink.compute(predictions=predictions, references=references, deferred_rule="guess")


def test_score_does_not_depend_on_the_order_of_predictions(blink, gpt4o):
    predictions, references = _inputs(gpt4o)
    shuffled = random.Random(0).sample(predictions, len(predictions))
    assert blink.compute(predictions=shuffled, references=references) == blink.compute(
        predictions=predictions, references=references
    )


@pytest.mark.parametrize(
    ("answer", "correct", "deferred", "unparsed"),
    [
        ("B", True, 0, 0),
        ("(B)", True, 0, 0),
        ("(B) Point B is closer.", True, 0, 0),
        ("Point A looks far.\n\nSo (B)", True, 0, 0),
        ("The answer is **(B)**.", True, 1, 0),
        ("(B).", True, 1, 0),
        ("(A)", False, 0, 0),
        ("Yes", False, 1, 1),
        ("A point is closer to the camera.", False, 1, 1),
        ("(A) or (B)", False, 1, 1),
        ("", False, 1, 1),
    ],
)
def test_extraction_on_a_two_option_question(blink, answer, correct, deferred, unparsed):
    references = [{"id": "val_Relative_Depth_1", "answer": "(B)", "task": "Relative_Depth", "choices": ["A", "B"]}]
    results = blink.compute(predictions=[{"id": "val_Relative_Depth_1", "prediction": answer}], references=references)
    assert (results["accuracy"], results["deferred"], results["unparsed"]) == (float(correct), deferred, unparsed)


def _write_parquet(root, bench, requests, with_images):
    """Writes real request rows in the Hub layout of BLINK-Benchmark/BLINK: `<Task>/val-00000-of-00001.parquet`."""
    features = datasets.Features(
        {
            "idx": datasets.Value("string"),
            "question": datasets.Value("string"),
            "sub_task": datasets.Value("string"),
            **{f"image_{n}": datasets.Image() for n in range(1, 5)},
            "choices": datasets.List(datasets.Value("string")),
            "answer": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "explanation": datasets.Value("string"),
        }
    )
    by_task = {}
    for request in requests:
        prompt = re.sub(r"<img src='[^']*'>\s*", "", request["query"]).strip()
        image = bench / "images" / f"{request['_idx']}.jpg"
        by_task.setdefault(request["_task"], []).append(
            {
                "idx": request["_idx"],
                "question": prompt.split("\nSelect from the following choices.")[0],
                "sub_task": request["_task"],
                "image_1": str(image) if with_images else None,
                "image_2": None,
                "image_3": None,
                "image_4": None,
                "choices": _choices(prompt),
                "answer": request["answer"],
                "prompt": prompt,
                "explanation": "",
            }
        )
    for task, task_rows in by_task.items():
        (root / task).mkdir(parents=True)
        datasets.Dataset.from_list(task_rows, features=features).to_parquet(root / task / "val-00000-of-00001.parquet")


def test_loader_reads_the_hub_parquet_layout(tmp_path, bench, requests):
    _write_parquet(tmp_path, bench, requests, with_images=False)
    rows = load_benchmark("blink", tmp_path, require_images=False)
    assert rows.num_rows == 277 and sorted(set(rows["task"])) == ["Jigsaw", "Relative_Depth", "Spatial_Relation"]
    key = json.loads((bench / "val_answers.json").read_text())
    assert all(key[row_id] == answer for row_id, answer in zip(rows["id"], rows["answer"], strict=True))
    first = rows[rows["id"].index("val_Relative_Depth_1")]
    assert first["question"] == (
        "Two points are circled on the image, labeled by A and B beside each circle. Which point is closer to the "
        "camera?\nSelect from the following choices.\n(A) A is closer\n(B) B is closer"
    )
    assert first["choices"] == ["A is closer", "B is closer"] and first["task"] == "Relative_Depth"
    assert load_benchmark("blink", tmp_path, tasks=["Jigsaw"], require_images=False).num_rows == 10
    with pytest.raises(ValueError, match="BLINK 'val_Jigsaw_1' .* has no 'image_1'"):
        load_benchmark("blink", tmp_path, tasks=["Jigsaw"])
    with pytest.raises(FileNotFoundError, match="BLINK task 'Counting': no val-\\*.parquet"):
        load_benchmark("blink", tmp_path, tasks=["Counting"])


def test_loader_decodes_the_images(tmp_path, bench, requests):
    with_images = [request for request in requests if (bench / "images" / f"{request['_idx']}.jpg").is_file()]
    _write_parquet(tmp_path, bench, with_images, with_images=True)
    rows = load_benchmark("blink", tmp_path)
    assert rows["id"] == ["val_Relative_Depth_1", "val_Spatial_Relation_1"]
    for row in rows:
        with Image.open(bench / "images" / f"{row['id']}.jpg") as original:
            assert len(row["image"]) == 1 and row["image"][0].tobytes() == original.convert("RGB").tobytes()
