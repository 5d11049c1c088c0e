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
"""What every benchmark folder shares: module and loader layout, doctests, join by id, and the free-text choice
extraction."""

import doctest
import importlib
import inspect
import shutil
import sys
from pathlib import Path

import evaluate
import pytest

import evaluate_metrics
import evaluate_metrics.loader_utils
import evaluate_metrics.metric_utils
import evaluate_metrics.runner
from evaluate_metrics import BENCHMARKS, module_path
from evaluate_metrics.metric_utils import extract_choice, join_by_id, matching_options


PACKAGE = Path(evaluate_metrics.__file__).parent
# Every folder of the package, found on disk rather than through the registry it checks.
NAMES = sorted(path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__")
CARD_SECTIONS = (
    "## Metric Description",
    "## How to Use",
    "### Inputs",
    "### Output Values",
    "#### Values from Popular Papers",
    "### Examples",
    "## Limitations and Bias",
    "## Citation",
    "## Further References",
)
# One valid reference row per module, to check the id handling they all share.
REFERENCE = {
    "blink": {"answer": "(A)", "task": "Counting", "choices": ["0", "1"]},
    "hallusionbench": {
        "answer": "1",
        "category": "VD",
        "subcategory": "illusion",
        "set_id": "0",
        "figure_id": "0",
        "question_id": "0",
    },
    "mmstar": {"answer": "A", "category": "math", "l2_category": "geometry", "options": []},
    "mmvp": {"answer": "(a)", "pair_id": "1", "options": ["Open", "Closed"]},
    "shapes": {"answer": "red", "question_type": "colour_of_shape"},
    "vsp": {"map_desc": [[1, 2]]},
    "vstar": {"answer": "A", "category": "direct_attributes", "options": ["red", "blue"]},
}


@pytest.fixture(scope="module", params=NAMES)
def loaded(request):
    return request.param, evaluate.load(module_path(request.param))


def test_every_folder_is_a_benchmark_found_by_name():
    assert NAMES == sorted(BENCHMARKS)
    assert all(BENCHMARKS[name].module_path == str(PACKAGE / name) for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_module_folder_follows_the_evaluate_layout(name):
    folder = Path(module_path(name))
    assert folder.is_absolute() and (folder / f"{name}.py").is_file()
    assert "evaluate" in (folder / "requirements.txt").read_text()
    card = (folder / "README.md").read_text()
    assert card.startswith("---\ntitle: ") and "\ndescription: " in card.split("\n---\n")[0]
    assert [section for section in CARD_SECTIONS if section not in card] == []
    # The shared helpers are one file linked into each folder; a checkout that copies links must keep them equal.
    helper = folder / "metric_utils.py"
    assert helper.read_bytes() == (folder.parent / "metric_utils.py").read_bytes()
    if helper.is_symlink():
        assert helper.resolve() == (folder.parent / "metric_utils.py").resolve()


@pytest.mark.parametrize("name", NAMES)
def test_module_folder_is_self_contained(name, tmp_path):
    # What evaluate needs of a folder published alone (e.g. as a Space): the module, the files it imports with a
    # single dot (links resolved), its card and requirements; never the loader or the package around it.
    copy = tmp_path / name
    shutil.copytree(module_path(name), copy, ignore=shutil.ignore_patterns("loader.py", "__init__.py", "__pycache__"))
    assert not any(path.is_symlink() for path in copy.iterdir())
    references = [{"id": key, **REFERENCE[name]} for key in ("q1", "q2")]
    predictions = [{"id": "q1", "prediction": "x"}, {"id": "q2", "prediction": "(a)"}]
    assert evaluate.load(str(copy)).compute(predictions=predictions, references=references) == evaluate.load(
        module_path(name)
    ).compute(predictions=predictions, references=references)


@pytest.mark.parametrize("name", NAMES)
def test_loader_reads_a_data_root(name):
    load = importlib.import_module(f"evaluate_metrics.{name}.loader").load
    assert next(iter(inspect.signature(load).parameters)) == "data_root"
    with pytest.raises(FileNotFoundError):
        BENCHMARKS[name].load(PACKAGE / "no-such-folder")


@pytest.mark.parametrize("name", NAMES)
def test_module_files_import_one_module_per_line(name):
    # evaluate reads "import a, b" as a package named "a," (docs/pitfalls.md, evaluate); "from a import b, c" is fine.
    for path in (Path(module_path(name)) / f"{name}.py", Path(module_path(name)) / "metric_utils.py"):
        imports = [line for line in path.read_text().splitlines() if line.startswith("import ")]
        assert imports and all("," not in line for line in imports), path


def test_docstring_examples_run(loaded):
    name, metric = loaded
    result = doctest.testmod(sys.modules[type(metric).__module__], optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, name


@pytest.mark.parametrize(
    "module",
    [
        evaluate_metrics,
        evaluate_metrics.loader_utils,
        evaluate_metrics.metric_utils,
        evaluate_metrics.runner,
        "evaluate_metrics.vsp.loader",
    ],
)
def test_package_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module) if isinstance(module, str) else module)
    assert result.attempted > 0 and result.failed == 0


def test_compute_has_explicit_options_and_info_is_typed(loaded):
    name, metric = loaded
    parameters = inspect.signature(metric._compute).parameters.values()
    assert all(parameter.kind is not inspect.Parameter.VAR_KEYWORD for parameter in parameters), name
    assert set(metric.info.features) == {"predictions", "references"}
    assert metric.info.citation.startswith("@") and "Returns:" in metric.info.inputs_description


def test_rows_are_joined_by_id_with_clear_errors(loaded):
    name, metric = loaded
    references = [{"id": key, **REFERENCE[name]} for key in ("q1", "q2")]
    predictions = [{"id": "q1", "prediction": "x"}, {"id": "q2", "prediction": "x"}]
    assert metric.compute(predictions=predictions[::-1], references=references) == metric.compute(
        predictions=predictions, references=references
    )
    other = {"id": "q3", "prediction": "x"}
    with pytest.raises(ValueError, match="No prediction for reference id 'q2'"):
        metric.compute(predictions=[predictions[0], other], references=references)
    with pytest.raises(ValueError, match="Duplicate prediction id 'q1'"):
        metric.compute(predictions=[predictions[0], predictions[0]], references=references)
    with pytest.raises(ValueError, match="Duplicate reference id 'q1'"):
        metric.compute(predictions=predictions, references=[references[0], references[0]])
    # With unequal counts evaluate itself refuses the batch, before any id is read.
    with pytest.raises(ValueError, match="Mismatch in the number of predictions"):
        metric.compute(predictions=predictions[:1], references=references)


def test_module_path_refuses_unknown_names():
    with pytest.raises(KeyError, match="Unknown benchmark 'mmbench'; known: blink, .*vstar"):
        module_path("mmbench")


def test_join_by_id_pairs_in_reference_order():
    pairs = join_by_id([{"id": "b", "p": 2}, {"id": "a", "p": 1}], [{"id": "a"}, {"id": "b"}])
    assert [(prediction["p"], reference["id"]) for prediction, reference in pairs] == [(1, "a"), (2, "b")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is (B).", "B"),
        ("b", "B"),
        ("(b)", "B"),
        ("[C].", "C"),
        ("Option B: blue", "B"),
        ("B. blue", "B"),
        ("blue", "B"),
        ("Blue.", "B"),
        ("The answer is blue.", "B"),
        ("Answer: D", "D"),
        ("The answer is B because the cup is blue.", "B"),
        ("Final answer: \\boxed{C}", "C"),
        ("**(B) picture B**", "B"),
        ("The cup looks blue.\n\nLooking again at the options, the correct choice is:\n\n**(B)**", "B"),
        ("Option A shows red, option B blue... so the correct answer is **Option B**.", "B"),
        ("I would say (C)", "C"),
        ("(A) is red.\n(B) is blue.\n\nIt must be (B).", "B"),
        # Adversarial: never an option.
        ("Yes", None),
        ("No.", None),
        ("A cat is sitting next to the cup.", None),
        ("I think the cup is on the table.", None),
        ("The answer is a cat", None),
        ("(A) or (B)", None),
        ("A and B", None),
        ("It is either (A) or (C).", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text, ["A", "B", "C", "D"], options=["red", "blue", "green", "white"]) == expected


def test_extract_choice_keeps_the_benchmark_case_and_option_count():
    assert extract_choice("(B) Closed", ["a", "b"]) == "b"
    assert extract_choice("A", ["a", "b"]) == "a"
    # "(C)" is not an option of a two-option question.
    assert extract_choice("(C)", ["a", "b"]) is None


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        # Exact texts come first, so options that differ only in punctuation or a sign stay apart.
        ('"Happy Easter"', ['"Happy Easter"', '"Happy Easter!"'], "A"),
        ('"Happy Easter!"', ['"Happy Easter"', '"Happy Easter!"'], "B"),
        ("Happy Easter!", ['"Happy Easter"', '"Happy Easter!"'], "B"),
        ("**happy  easter**", ['"Happy Easter"', '"Happy Easter!"'], "A"),
        ("-0.21", ["-0.21", "0.21", "21", "0"], "A"),
        ("The answer is -0.21.", ["-0.21", "0.21", "21", "0"], "A"),
        ("Answer: 0.21", ["-0.21", "0.21", "21", "0"], "B"),
        ("a^2 - 2*a*b + b^2", ["a^2 - 2*a*b + b^2", "a^2 + 2*a*b + b^2"], "A"),
        # Equal at the level where the answer matches: no option is chosen.
        ("happy easter.", ['"Happy Easter"', '"Happy Easter!"'], None),
        ("The answer is Happy Easter?", ['"Happy Easter"', '"Happy Easter!"'], None),
        ("18", ["9", "12", "18", "18"], None),
        # A letter still decides before any text.
        ("(C)", ["9", "12", "18", "18"], "C"),
    ],
)
def test_extract_choice_never_merges_options_that_differ(text, options, expected):
    assert extract_choice(text, "ABCD"[: len(options)], options=options) == expected


def test_matching_options_reports_every_option_at_the_first_level_that_matches():
    assert matching_options("Open", ["open", "Open"]) == [1]
    assert matching_options("OPEN", ["open", "Open"]) == [0, 1]
    assert matching_options("Closed", ["open", "Open"]) == []
