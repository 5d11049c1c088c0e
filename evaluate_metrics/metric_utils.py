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
"""Helpers shared by the lavit-hf benchmark modules: joining rows by id and reading a chosen option from free text.

This is the one copy of the code. Every module folder holds a symbolic link named `metric_utils.py` to it, because a
module loaded with `evaluate.load(<folder>)` may only import files of its own folder (single-dot relative imports),
and a link keeps one source instead of drifting copies (`tests/test_metrics_common.py` checks the links).
"""

import re
from collections.abc import Iterable, Sequence
from typing import Any

import datasets
import evaluate


def join_by_id(predictions: Iterable[dict[str, Any]], references: Iterable[dict[str, Any]]) -> list[tuple[dict, dict]]:
    """
    Pairs every reference with the prediction that has the same `id`, as the squad metric does.

    Args:
        predictions (`Iterable[dict]`):
            Rows with an `"id"` key.
        references (`Iterable[dict]`):
            Rows with an `"id"` key.

    Returns:
        `list[tuple[dict, dict]]`: `(prediction, reference)` pairs, in the order of the references.

    Raises:
        `ValueError`: an id is duplicated on either side, or present on one side only; the message names it.

    Example:

    ```python
    >>> join_by_id([{"id": "2", "p": "b"}, {"id": "1", "p": "a"}], [{"id": "1"}, {"id": "2"}])
    [({'id': '1', 'p': 'a'}, {'id': '1'}), ({'id': '2', 'p': 'b'}, {'id': '2'})]

    ```
    """
    by_id: dict[str, dict] = {}
    for prediction in predictions:
        if prediction["id"] in by_id:
            raise ValueError(f"Duplicate prediction id {prediction['id']!r}: each id must be predicted once.")
        by_id[prediction["id"]] = prediction
    pairs, seen = [], set()
    for reference in references:
        if reference["id"] in seen:
            raise ValueError(f"Duplicate reference id {reference['id']!r}: each id must be referenced once.")
        seen.add(reference["id"])
        if reference["id"] not in by_id:
            raise ValueError(f"No prediction for reference id {reference['id']!r}.")
        pairs.append((by_id[reference["id"]], reference))
    extra = [key for key in by_id if key not in seen]
    if extra:
        raise ValueError(f"Prediction id {extra[0]!r} has no reference ({len(extra)} such id(s)).")
    return pairs


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean as a Python float, 0.0 for an empty sequence."""
    return float(sum(values) / len(values)) if values else 0.0


def accuracy_by_group(correct: dict[str, list[bool]]) -> dict[str, float]:
    """
    `accuracy_<group>` for each group, in sorted order.

    Example:

    ```python
    >>> accuracy_by_group({"b": [True, False], "a": [True]})
    {'accuracy_a': 1.0, 'accuracy_b': 0.5}

    ```
    """
    return {f"accuracy_{name}": mean(correct[name]) for name in sorted(correct)}


def benchmark_info(
    description: str, citation: str, inputs_description: str, references: dict[str, Any], **links: Any
) -> evaluate.MetricInfo:
    """
    The `MetricInfo` of a benchmark module: predictions are `{"id", "prediction"}` rows of raw model text, references
    are `{"id", **references}` rows.

    Args:
        description (`str`), citation (`str`), inputs_description (`str`):
            The module's `_DESCRIPTION`, `_CITATION` and `_KWARGS_DESCRIPTION`.
        references (`dict[str, Any]`):
            The reference features besides `id`, e.g. `{"answer": datasets.Value("string")}`.
        links:
            `reference_urls`, `codebase_urls` and `homepage`.
    """
    string = datasets.Value("string")
    features = {"predictions": {"id": string, "prediction": string}, "references": {"id": string, **references}}
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=datasets.Features(features),
        license="apache-2.0",
        **links,
    )


# Markdown emphasis and code marks around an answer ("**(B) picture B**") would hide the letter from the patterns.
_MARKDOWN = re.compile(r"[*`]+")
# What may follow a bare letter for it to count as an option: the end, punctuation, or a connective. Any other
# word after it ("A cat", "I think") makes it an article or a pronoun, never an option.
_AFTER_LETTER = r"(?=\s*(?:$|[.,;:!?)\]}]|\s(?:because|since|as)\b))"


# Option texts are compared at three levels, strictest first: exactly (outer white space aside); ignoring case,
# markdown marks, runs of white space and enclosing quotes; ignoring punctuation too. "0.21" and "-0.21", or
# "Happy Easter" and "Happy Easter!", are told apart at the first two levels and only merge at the last.
_QUOTES = "\"'“”‘’"


def _exact(text: str) -> str:
    return text.strip()


def _folded(text: str) -> str:
    return re.sub(r"\s+", " ", _MARKDOWN.sub("", text)).strip().strip(_QUOTES).strip().casefold()


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def matching_options(text: str, options: Sequence[str]) -> list[int]:
    """
    The indices of the options whose text `text` is, at the strictest level where it is any: exactly, then ignoring
    case, markdown marks, white space and enclosing quotes, then ignoring punctuation too. More than one index means
    that `text` cannot tell those options apart.

    Example:

    ```python
    >>> options = ['"Happy Easter"', '"Happy Easter!"']
    >>> matching_options('"Happy Easter"', options), matching_options("Happy Easter!", options)
    ([0], [1])
    >>> matching_options("happy easter.", options), matching_options("Merry Christmas", options)
    ([0, 1], [])

    ```
    """
    for compare in (_exact, _folded, _normalise):
        key = compare(text)
        if key:
            found = [index for index, option in enumerate(options) if compare(option) == key]
            if found:
                return found
    return []


def _letter_patterns(letters: Sequence[str]) -> dict[str, re.Pattern]:
    both = "".join(sorted({c for letter in letters for c in (letter.lower(), letter.upper())}))
    upper = "".join(sorted({letter.upper() for letter in letters}))
    # After a cue, a letter counts in parentheses ("(b)") or bare but followed by punctuation ("B.", "b").
    token = rf"(?:\(\s*([{both}])\s*\)|(?<![\w'])([{upper}]){_AFTER_LETTER})"
    return {
        "alone": re.compile(rf"^\s*[(\[]?\s*([{both}])\s*[)\]]?\s*[.:]?\s*$"),
        "cue": re.compile(
            rf"(?:\b(?:answer|choice)\s*(?:is|would be|should be|=)?\s*[:\-]?\s*|\\boxed\{{\s*(?:\\text\{{\s*)?)"
            rf"(?:option\s+)?{token}",
            re.IGNORECASE,
        ),
        # The text after a cue runs to the end of its line or sentence; a dash before a number is its sign, and a
        # dot before a digit is a decimal point ("The answer is -0.21.").
        "cue_text": re.compile(
            r"\b(?:answer|choice)\s*(?:is|would be|should be|=)?\s*(?::|-(?!\d))?\s*((?:[^\n.]|\.(?=\d))+)", re.I
        ),
        "mention": re.compile(
            rf"\(\s*([{both}])\s*\)|\boption\s+([{both}])\b|^\s*([{upper}])[.:)](?!\w)", re.IGNORECASE | re.MULTILINE
        ),
    }


def _mentions(pattern: re.Pattern, text: str) -> set[str]:
    return {next(group for group in match.groups() if group).upper() for match in pattern.finditer(text)}


def extract_choice(text: str | None, letters: Sequence[str], options: Sequence[str] | None = None) -> str | None:
    """
    Reads which option a free-text answer chooses, or `None` when it chooses none or several.

    The rules, first match wins (markdown `*` and backticks are removed first):

    1. The whole answer is one letter, bare or in brackets: `"b"`, `"(B)"`, `"[C]."`.
    2. The whole answer is one option's text: `"red"`. Texts are compared exactly first, then ignoring case,
       markdown marks, white space and enclosing quotes, then ignoring punctuation too (`matching_options`); at the
       first level where the answer matches, it must match one option only. Against `"Happy Easter"` and
       `"Happy Easter!"`, `"Happy Easter!"` chooses the second, while `"happy easter."` equals both once punctuation
       is ignored and chooses none (the answer is not read further).
    3. The last answer cue (`"answer"` or `"choice"`, optionally `is`/`:`/`option`; or `\\boxed{`) followed by a
       letter in parentheses, or by a bare letter followed by punctuation, the end, or "because/since/as"; or,
       failing a letter, a cue followed by one option's text, compared as in rule 2 (`"The answer is red."`).
    4. Exactly one distinct option is mentioned in the whole answer, else in its last paragraph: `"(A)"`,
       `"option A"`, or a line starting with `"A."`, `"A:"` or `"A)"` (so `"(b) Closed"` and `"B: red"` count).
       An answer that starts with one option and then weighs another is read from its last paragraph only.

    A letter followed by a word (`"A cat"`, `"I see"`) is never read as an option, nor are `"Yes"`/`"No"`.

    Args:
        text (`str` or `None`):
            The model's raw answer.
        letters (`Sequence[str]`):
            The option letters in the benchmark's case, e.g. `["A", "B", "C", "D"]` or `["a", "b"]`.
        options (`Sequence[str]`, *optional*):
            The option texts in letter order, for rules 2 and 3.

    Returns:
        `str` or `None`: the chosen letter, spelled as in `letters`.

    Example:

    ```python
    >>> extract_choice("The answer is (B).", ["A", "B"])
    'B'
    >>> extract_choice("A cat sits on the mat.", ["A", "B"]) is None
    True
    >>> extract_choice("Red", ["A", "B"], options=["red", "blue"])
    'A'
    >>> extract_choice("0.21", ["A", "B"], options=["-0.21", "0.21"])
    'B'

    ```
    """
    if not text or not text.strip():
        return None
    canonical = {letter.upper(): letter for letter in letters}
    options = list(options or [])[: len(letters)]
    raw, text = text, _MARKDOWN.sub("", text)
    patterns = _letter_patterns(letters)

    match = patterns["alone"].match(text)
    if match:
        return canonical[match.group(1).upper()]
    found = matching_options(raw, options)
    if found:
        return letters[found[0]] if len(found) == 1 else None
    cues = list(patterns["cue"].finditer(text))
    if cues:
        return canonical[next(group for group in cues[-1].groups() if group).upper()]
    cue_texts = list(patterns["cue_text"].finditer(text))
    if cue_texts:
        found = matching_options(cue_texts[-1].group(1), options)
        if found:
            return letters[found[0]] if len(found) == 1 else None
    for scope in (text, re.split(r"\n\s*\n", text.strip())[-1]):
        mentioned = _mentions(patterns["mention"], scope)
        if len(mentioned) == 1:
            return canonical[mentioned.pop()]
    return None


def grade_choice(text: str | None, answer: str, options: Sequence[str]) -> tuple[bool, bool]:
    """
    Whether a free-text answer chooses the gold option, and whether it chooses any option at all.

    The letters are A, B, ... one per option (at least two); `answer` may be `"B"`, `"(b)"` or `"b"`.

    Example:

    ```python
    >>> grade_choice("The answer is (b).", "(b)", ["Open", "Closed"]), grade_choice("Yes", "(b)", [])
    ((True, True), (False, False))

    ```
    """
    choice = extract_choice(text, "ABCDEFGHIJ"[: max(2, len(options))], options)
    return choice == answer.strip().strip("()").strip().upper(), choice is not None


__all__ = [
    "accuracy_by_group",
    "benchmark_info",
    "extract_choice",
    "grade_choice",
    "join_by_id",
    "matching_options",
    "mean",
]
