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
"""MMVP: per-question and per-pair accuracy of free-text multiple-choice answers."""

from collections import defaultdict

import datasets
import evaluate

from .metric_utils import benchmark_info, grade_choice, join_by_id, mean


_CITATION = """\
@inproceedings{tong2024eyes,
  title={Eyes Wide Shut? Exploring the Visual Shortcomings of Multimodal LLMs},
  author={Tong, Shengbang and Liu, Zhuang and Zhai, Yuexiang and Ma, Yi and LeCun, Yann and Xie, Saining},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2024}
}
"""

_DESCRIPTION = """\
MMVP (Multimodal Visual Patterns) asks 300 two-option questions about 150 pairs of images that CLIP embeds alike.
Rows 2k-1 and 2k of `Questions.csv` ask the same question about the two images of a pair, with opposite answers.

This module reads the chosen option from the model's free text and reports both figures in use: the accuracy per
question (what LaViT and most later papers report) and the MMVP paper's own pair accuracy, where a pair counts only
when both of its questions are answered correctly. The LaViT reference code reported the first only (lavit-hf
docs/method.md, section 6.5). The official MMVP script grades answers with GPT-4 (`scripts/gpt_grader.py`); this
module replaces that judge with the deterministic rule below, so no network is needed.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[dict]`):
        One row per question: `id` (`str`, the MMVP `Index`) and `prediction` (`str`, the model's raw answer).
    references (`list[dict]`):
        One row per question: `id` (`str`), `answer` (`str`, `"(a)"` or `"(b)"`), `pair_id` (`str`, the same for
        rows 2k-1 and 2k; `evaluate_metrics/mmvp/loader.py` sets it to `str(k)`) and `options` (`list[str]`,
        the option texts in letter order, e.g. `["Open", "Closed"]`; may be empty).

Rows are joined by `id`, never by position. Every pair must hold exactly two questions.

Answer extraction (`metric_utils.extract_choice`, letters `a`, `b`, ... in either case, one per option, at least
two), first match wins:
    1. the whole answer is one letter, bare or bracketed: "b", "(B)", "[a].";
    2. the whole answer is one option's text: "closed"; compared exactly, then ignoring case, markdown marks,
       white space and enclosing quotes, then ignoring punctuation too, and at the first level that matches it
       must match one option only ("Happy Easter!" against "Happy Easter" / "Happy Easter!" is the second one,
       "happy easter." is neither);
    3. the last answer cue, "answer"/"choice" [is|:] [option] or `\\boxed{`, followed by a letter in parentheses
       or a bare letter followed by punctuation or the end ("The answer is (b).", "Answer: B"), or by one
       option's text ("The answer is closed.");
    4. exactly one distinct option is mentioned ("(a)", "option a", a line starting "A.", "A:" or "A)", so
       "(b) Closed" counts) in the whole answer, else in its last paragraph.
A letter followed by a word ("A cat", "I think") is never an option, "Yes"/"No" are never options, and an
answer naming two options ("(a) or (b)") chooses none. An answer that chooses no option is wrong and counted in
`unparsed`.

Returns:
    accuracy (`float`): fraction of questions answered correctly, 0.0 to 1.0, higher is better.
    pair_accuracy (`float`): fraction of pairs with both questions correct, 0.0 to 1.0, higher is better.
    num_questions (`int`): questions scored.
    num_pairs (`int`): pairs scored.
    unparsed (`int`): answers that chose no option (scored as wrong).

Examples:
    >>> import evaluate
    >>> from evaluate_metrics import module_path
    >>> mmvp = evaluate.load(module_path("mmvp"))
    >>> references = [
    ...     {"id": "1", "answer": "(a)", "pair_id": "1", "options": ["Open", "Closed"]},
    ...     {"id": "2", "answer": "(b)", "pair_id": "1", "options": ["Open", "Closed"]},
    ...     {"id": "3", "answer": "(a)", "pair_id": "2", "options": ["Round", "Thin"]},
    ...     {"id": "4", "answer": "(b)", "pair_id": "2", "options": ["Round", "Thin"]},
    ... ]
    >>> predictions = [
    ...     {"id": "2", "prediction": "The wings are folded, so the answer is (b)."},
    ...     {"id": "1", "prediction": "Open"},
    ...     {"id": "3", "prediction": "(a) Round"},
    ...     {"id": "4", "prediction": "Yes"},
    ... ]
    >>> results = mmvp.compute(predictions=predictions, references=references)
    >>> print(results)
    {'accuracy': 0.75, 'pair_accuracy': 0.5, 'num_questions': 4, 'num_pairs': 2, 'unparsed': 1}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Mmvp(evaluate.Metric):
    def _info(self):
        return benchmark_info(
            _DESCRIPTION,
            _CITATION,
            _KWARGS_DESCRIPTION,
            references={
                "answer": datasets.Value("string"),
                "pair_id": datasets.Value("string"),
                "options": datasets.List(datasets.Value("string")),
            },
            reference_urls=["https://arxiv.org/abs/2401.06209", "https://huggingface.co/datasets/MMVP/MMVP"],
            codebase_urls=["https://github.com/tsb0601/MMVP"],
            homepage="https://tsb0601.github.io/mmvp_blog/",
        )

    def _compute(self, predictions, references):
        correct, unparsed = [], 0
        by_pair = defaultdict(list)
        for prediction, reference in join_by_id(predictions, references):
            right, parsed = grade_choice(prediction["prediction"], reference["answer"], reference["options"])
            unparsed += not parsed
            correct.append(right)
            by_pair[reference["pair_id"]].append(right)
        for pair_id, answers in by_pair.items():
            if len(answers) != 2:
                raise ValueError(f"MMVP pair {pair_id!r} has {len(answers)} question(s); every pair needs exactly 2.")
        return {
            "accuracy": mean(correct),
            "pair_accuracy": mean([all(answers) for answers in by_pair.values()]),
            "num_questions": len(correct),
            "num_pairs": len(by_pair),
            "unparsed": unparsed,
        }
