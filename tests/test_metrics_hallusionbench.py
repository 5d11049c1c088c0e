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
"""HallusionBench: the authors' groupings on the 1,129 real questions, and the loader."""

import json
import random

import evaluate
import pytest
from PIL import Image

from evaluate_metrics import load_benchmark, module_path


@pytest.fixture(scope="module")
def bench(bench_samples):
    return bench_samples / "hallusionbench"


@pytest.fixture(scope="module")
def hallusionbench():
    return evaluate.load(module_path("hallusionbench"))


@pytest.fixture(scope="module")
def references(bench):
    rows = load_benchmark("hallusionbench", bench, require_images=False)
    return rows.remove_columns(["image", "question"]).to_list()


def _answers(references, flip=()):
    say = {"yes": "Yes, it is.", "no": "No, it is not."}
    other = {"yes": "no", "no": "yes"}
    return [
        {"id": row["id"], "prediction": say[other[row["answer"]] if row["id"] in flip else row["answer"]]}
        for row in references
    ]


def test_gold_answers_score_one_with_the_papers_counts(hallusionbench, references):
    results = hallusionbench.compute(predictions=_answers(references), references=references)
    # The paper: 1,129 questions about 346 figures.
    assert results == {
        "question_accuracy": 1.0,
        "figure_accuracy": 1.0,
        "pair_accuracy": 1.0,
        "num_questions": 1129,
        "num_figures": 346,
        "num_pairs": 455,
        "unparsed": 0,
    }


def test_one_wrong_answer_breaks_its_figure_and_its_question_group(hallusionbench, references):
    results = hallusionbench.compute(
        predictions=_answers(references, flip={"VD_illusion_0_1_0"}), references=references
    )
    assert results["question_accuracy"] == 1128 / 1129
    assert results["figure_accuracy"] == 345 / 346 and results["pair_accuracy"] == 454 / 455
    # A VS question without an image belongs to no figure: a wrong answer there costs its group only.
    results = hallusionbench.compute(predictions=_answers(references, flip={"VS_chart_0_0_0"}), references=references)
    assert results["figure_accuracy"] == 1.0 and results["pair_accuracy"] == 454 / 455


def test_unclear_counts_as_correct_only_without_an_image(hallusionbench, references):
    predictions = _answers(references)
    unclear = {"VS_chart_0_0_0", "VD_illusion_0_1_0"}
    for prediction in predictions:
        if prediction["id"] in unclear:
            prediction["prediction"] = "I cannot tell from the information given."
    results = hallusionbench.compute(predictions=predictions, references=references)
    assert results["unparsed"] == 2 and results["question_accuracy"] == 1128 / 1129
    judged = {row["id"]: "2" if row["id"] in unclear else "1" for row in references}
    assert hallusionbench.compute(
        predictions=_answers(references), references=references, judge_correctness=judged
    ) == {**results, "unparsed": 0}


def test_score_does_not_depend_on_the_order_of_predictions(hallusionbench, references):
    predictions = _answers(references, flip={"VD_illusion_0_1_0", "VS_map_1_1_0"})
    shuffled = random.Random(0).sample(predictions, len(predictions))
    assert hallusionbench.compute(predictions=shuffled, references=references) == hallusionbench.compute(
        predictions=predictions, references=references
    )


def test_released_sample_answers_join_the_questions(hallusionbench, references, bench):
    sample = json.loads((bench / "HallusionBench_result_sample.json").read_text())
    by_id = {row["id"]: row for row in references}
    ids = [
        "_".join(item[key] for key in ("category", "subcategory", "set_id", "figure_id", "question_id"))
        for item in sample
    ]
    predictions = [
        {"id": row_id, "prediction": item["model_prediction"]} for row_id, item in zip(ids, sample, strict=True)
    ]
    results = hallusionbench.compute(predictions=predictions, references=[by_id[row_id] for row_id in ids])
    # No judgments or scores ship with the sample: only its structure is checked here.
    assert results["num_questions"] == 254 and results["num_figures"] == 69 and results["num_pairs"] == 117
    assert 0 < results["unparsed"] < 254


@pytest.mark.parametrize(
    ("answer", "reading"),
    [
        ("Yes", "yes"),
        ("**No**, the bar is shorter.", "no"),
        ("Looking at the chart, the answer is: yes", "yes"),
        ("There is no doubt that the answer is yes.", "yes"),
        ("The left one, yes.", "yes"),
        ("Not the same size.", None),
        ("Yesterday it rained.", None),
        ("Maybe yes, maybe no.", None),
        ("", None),
    ],
)
def test_yes_no_reading(hallusionbench, answer, reading):
    keys = {"category": "VD", "subcategory": "illusion", "set_id": "0", "figure_id": "1", "question_id": "0"}
    results = hallusionbench.compute(
        predictions=[{"id": "q", "prediction": answer}], references=[{"id": "q", "answer": "1", **keys}]
    )
    assert (results["question_accuracy"], results["unparsed"]) == (float(reading == "yes"), int(reading is None))


def test_loader_finds_figures_and_names_missing_ones(tmp_path, bench):
    # Set 0 of VS/chart: figure 0 (four questions asked without an image) and figure 1 (with ./VS/chart/0_1.png).
    questions = json.loads((bench / "HallusionBench.json").read_text())[:6]
    (tmp_path / "HallusionBench.json").write_text(json.dumps(questions))
    with pytest.raises(FileNotFoundError, match="Figure of HallusionBench VS_chart_0_1_0 not found: tried .*0_1.png"):
        load_benchmark("hallusionbench", tmp_path)
    (tmp_path / "hallusion_bench" / "VS" / "chart").mkdir(parents=True)
    Image.new("RGB", (20, 10)).save(tmp_path / "hallusion_bench" / "VS" / "chart" / "0_1.png")
    rows = load_benchmark("hallusionbench", tmp_path)
    assert rows["id"][3:5] == ["VS_chart_0_0_3", "VS_chart_0_1_0"] and rows["answer"][:2] == ["no", "yes"]
    assert rows["image"][:4] == [None] * 4 and rows[4]["image"].size == (20, 10)
    (tmp_path / "HallusionBench.json").write_text(json.dumps([{**questions[0], "gt_answer": "maybe"}]))
    with pytest.raises(ValueError, match="question 1 \\(VS_chart_0_0_0\\): gt_answer 'maybe'"):
        load_benchmark("hallusionbench", tmp_path)
