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
"""V* Bench: accuracy per category and overall for free-text multiple-choice answers."""

from collections import defaultdict

import datasets
import evaluate

from .metric_utils import accuracy_by_group, benchmark_info, grade_choice, join_by_id, mean


_CITATION = """\
@article{vstar,
  title={V*: Guided Visual Search as a Core Mechanism in Multimodal LLMs},
  author={Wu, Penghao and Xie, Saining},
  journal={arXiv preprint arXiv:2312.14135},
  year={2023}
}
"""

_DESCRIPTION = """\
V* Bench asks 191 questions about small details of high-resolution images: 115 `direct_attributes` questions (colour
or material of an object, 4 options) and 76 `relative_position` questions (left/right or above/below, 2 options).

The official script (`vstar_bench_eval.py` of penghao-wu/vstar) picks the option with the lowest language-model loss
and reports the accuracy of each category and the accuracy over all 191 questions. A generative model answers in free
text instead, so this module reads the chosen letter with the deterministic rule below and keeps the official
aggregation (overall = over questions, not the mean of the two categories).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[dict]`):
        One row per question: `id` (`str`, the `question_id` of `test_questions.jsonl`) and `prediction` (`str`, the
        model's raw answer).
    references (`list[dict]`):
        One row per question: `id` (`str`), `answer` (`str`, the option letter, `"A"`...), `category` (`str`,
        `"direct_attributes"` or `"relative_position"`) and `options` (`list[str]`, option texts in letter order).
    macro (`bool`, *optional*, defaults to `False`):
        Also return `macro_accuracy`, the unweighted mean of the category accuracies, which some papers report as
        "overall" instead of the official accuracy over questions.

Rows are joined by `id`, never by position.

Answer extraction (`metric_utils.extract_choice`, letters `A`, `B`, ... in either case, one per option, at least
two), first match wins:
    1. the whole answer is one letter, bare or bracketed: "b", "(B)", "[C].";
    2. the whole answer is one option's text: "red"; compared exactly, then ignoring case, markdown marks,
       white space and enclosing quotes, then ignoring punctuation too, and at the first level that matches it
       must match one option only ("Happy Easter!" against "Happy Easter" / "Happy Easter!" is the second one,
       "happy easter." is neither);
    3. the last answer cue, "answer"/"choice" [is|:] [option] or `\\boxed{`, followed by a letter in parentheses or
       a bare letter followed by punctuation or the end ("The answer is (B).", "Answer: B"), or by one option's
       text ("The answer is red.");
    4. exactly one distinct option is mentioned ("(B)", "option B", a line starting "B.", "B:" or "B)", so
       "(B) red" counts) in the whole answer, else in its last paragraph.
A letter followed by a word ("A cat", "I think") is never an option, "Yes"/"No" are never options, and an
answer naming two options ("(A) or (B)") chooses none. An answer that chooses no option is wrong and counted in
`unparsed`.

Returns:
    accuracy (`float`): fraction of all questions answered correctly (official overall), 0.0 to 1.0, higher is better.
    accuracy_<category> (`float`): accuracy of each category present, e.g. `accuracy_direct_attributes`.
    macro_accuracy (`float`, only with `macro=True`): unweighted mean of the category accuracies.
    num_questions (`int`): questions scored.
    unparsed (`int`): answers that chose no option (scored as wrong).

Examples:
    >>> import evaluate
    >>> from evaluate_metrics import module_path
    >>> vstar = evaluate.load(module_path("vstar"))
    >>> references = [
    ...     {"id": "0", "answer": "A", "category": "direct_attributes", "options": ["rubber", "cotton", "kevlar"]},
    ...     {"id": "1", "answer": "C", "category": "direct_attributes", "options": ["purple", "red", "blue"]},
    ...     {"id": "2", "answer": "B", "category": "relative_position", "options": ["left", "right"]},
    ... ]
    >>> predictions = [
    ...     {"id": "0", "prediction": "Rubber."},
    ...     {"id": "1", "prediction": "A blue dustpan leans on the wall, so the answer is C."},
    ...     {"id": "2", "prediction": "(A) or (B)"},
    ... ]
    >>> results = vstar.compute(predictions=predictions, references=references, macro=True)
    >>> print(results)  # doctest: +NORMALIZE_WHITESPACE
    {'accuracy': 0.6666666666666666, 'accuracy_direct_attributes': 1.0, 'accuracy_relative_position': 0.0,
     'macro_accuracy': 0.5, 'num_questions': 3, 'unparsed': 1}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Vstar(evaluate.Metric):
    def _info(self):
        return benchmark_info(
            _DESCRIPTION,
            _CITATION,
            _KWARGS_DESCRIPTION,
            references={
                "answer": datasets.Value("string"),
                "category": datasets.Value("string"),
                "options": datasets.List(datasets.Value("string")),
            },
            reference_urls=["https://arxiv.org/abs/2312.14135", "https://huggingface.co/datasets/craigwu/vstar_bench"],
            codebase_urls=["https://github.com/penghao-wu/vstar"],
            homepage="https://vstar-seal.github.io/",
        )

    def _compute(self, predictions, references, macro=False):
        by_category, unparsed = defaultdict(list), 0
        for prediction, reference in join_by_id(predictions, references):
            right, parsed = grade_choice(prediction["prediction"], reference["answer"], reference["options"])
            unparsed += not parsed
            by_category[reference["category"]].append(right)
        per_category = accuracy_by_group(by_category)
        # Official overall (vstar_bench_eval.py: np.mean(all_acc)): over questions, not over categories.
        results = {"accuracy": mean([flag for correct in by_category.values() for flag in correct]), **per_category}
        if macro:
            results["macro_accuracy"] = mean(list(per_category.values()))
        return {**results, "num_questions": sum(len(c) for c in by_category.values()), "unparsed": unparsed}
