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
"""VSP spatial planning: success rate of move plans walked on the benchmark's grid (`map_desc`)."""

from collections import defaultdict

import datasets
import evaluate

from .metric_utils import accuracy_by_group, benchmark_info, join_by_id, mean


_CITATION = """\
@article{wu2024vsp,
  title={VSP: Assessing the Dual Challenges of Perception and Reasoning in Spatial Planning Tasks for VLMs},
  author={Wu, Qiucheng and Zhao, Handong and Saxon, Michael and Bui, Trung and Wang, William Yang and Zhang, Yang
          and Chang, Shiyu},
  journal={arXiv preprint arXiv:2407.01863},
  year={2024}
}
@article{yang2025machine,
  title={Machine Mental Imagery: Empower Multimodal Reasoning with Latent Visual Tokens},
  author={Yang, Zeyuan and Yu, Xueyang and Chen, Delin and Shen, Maohao and Gan, Chuang},
  journal={arXiv preprint arXiv:2506.17218},
  year={2025}
}
"""

_DESCRIPTION = """\
VSP spatial planning (the FrozenLake-style maze task of VSP, in the split used by Mirage and LaViT:
`test_direct.jsonl`, 100 maps each of 3x3 to 6x6) asks for a move plan from the start to the goal of a grid without
stepping into a hole. The answer is put in `\\boxed{}`.

The plan is scored by walking it on the row's grid, `map_desc` (0 free, -1 hole, 1 start, 2 goal), as Mirage's
`simulate_vsp` does; the LaViT reference code scored against another field (lavit-hf docs/method.md, section 6.5).
The `frozenlake` configuration follows the original VSP checker (`VSP-main/maze/task-main/eval.py`), which steps
gym's `FrozenLake-v1` and therefore ends the walk at the goal.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[dict]`):
        One row per map: `id` (`str`; `evaluate_metrics/vsp/loader.py` uses `"level<N>_<map_id>"`, since
        `map_id` repeats across grid sizes) and `prediction` (`str`, the model's raw answer).
    references (`list[dict]`):
        One row per map: `id` (`str`) and `map_desc` (`list[list[int]]`, the grid: 0 free, -1 hole, 1 start,
        2 goal; exactly one start and one goal).

Rows are joined by `id`, never by position.

Plan extraction (Mirage, `mathruler.grader.extract_boxed_content` then `parse_action_sequence`): the content of the
last `\\boxed{...}` (braces balanced); upper-cased, every character among U, D, L, R is one move, in order, and all
other characters are dropped, so "R, D", "RD", "right, down" and "\\text{R,D}" give the same plan. An answer with no
`\\boxed{}`, or none of these letters inside it, is an empty plan and is counted in `unparsed`.

Success rule (configuration `"default"`, Mirage's `simulate_vsp`): start at the cell holding 1 and apply the moves
(U = row - 1, D = row + 1, L = column - 1, R = column + 1). A move off the grid is ignored (the agent stays). Stepping
on a hole (-1) fails at once. After the last move the agent must stand on the goal (2): a plan that stops short
fails, and so does one that walks through the goal and on.
Configuration `"frozenlake"` (original VSP checker): the same, except that the walk also ends, successfully, as soon
as the goal is reached (later moves are ignored), and a walk still going after 100 moves fails (gym's time limit for
`FrozenLake-v1`).

Returns:
    accuracy (`float`): fraction of maps solved, 0.0 to 1.0, higher is better.
    accuracy_<N>x<N> (`float`): fraction solved per grid size present, e.g. `accuracy_3x3`.
    num_questions (`int`): maps scored.
    fell_in_hole (`int`): plans that stepped on a hole.
    unparsed (`int`): answers with no move inside a `\\boxed{}` (scored as failures).

Examples:
    >>> import evaluate
    >>> from evaluate_metrics import module_path
    >>> vsp = evaluate.load(module_path("vsp"))
    >>> references = [
    ...     {"id": "level3_31", "map_desc": [[2, -1, 1], [0, 0, 0], [0, 0, 0]]},
    ...     {"id": "level3_32", "map_desc": [[2, -1, 1], [0, 0, 0], [0, 0, 0]]},
    ...     {"id": "level3_33", "map_desc": [[2, -1, 1], [0, 0, 0], [0, 0, 0]]},
    ... ]
    >>> predictions = [
    ...     {"id": "level3_31", "prediction": "Go down, then left twice, then up: \\\\boxed{D, L, L, U}"},
    ...     {"id": "level3_32", "prediction": "\\\\boxed{L, L}"},
    ...     {"id": "level3_33", "prediction": "Down, left, left, up."},
    ... ]
    >>> results = vsp.compute(predictions=predictions, references=references)
    >>> print(results)  # doctest: +NORMALIZE_WHITESPACE
    {'accuracy': 0.3333333333333333, 'accuracy_3x3': 0.3333333333333333, 'num_questions': 3, 'fell_in_hole': 1,
     'unparsed': 1}
"""

# Row and column steps of each move letter (also the loader's breadth-first search).
MOVES = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}
# gym registers FrozenLake-v1 with max_episode_steps=100; the original VSP checker inherits that limit.
_FROZENLAKE_MAX_STEPS = 100


def boxed_content(text: str) -> str | None:
    """
    The content of the last `\\boxed{...}` with balanced braces, or `None` (Mirage uses `mathruler`'s
    `extract_boxed_content`, which returns the string "None" then; it holds no move letter either way).

    Example:

    ```python
    >>> boxed_content(r"first \\boxed{L} then \\boxed{\\text{R, D}}")
    '\\\\text{R, D}'

    ```
    """
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    depth, content = 0, text[start + len("\\boxed{") :]
    for position, char in enumerate(content):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == -1:
            return content[:position].strip()
    return None


def walk(map_desc: list[list[int]], moves: str, stop_at_goal: bool = False) -> str:
    """
    Walks `moves` on the grid and says how it ends: `"goal"`, `"hole"`, `"short"` (elsewhere) or `"timeout"`.

    Example:

    ```python
    >>> walk([[1, 0], [-1, 2]], "RD"), walk([[1, 0], [-1, 2]], "D"), walk([[1, 0], [-1, 2]], "UUR")
    ('goal', 'hole', 'short')

    ```
    """
    [(row, column)] = [(r, c) for r, line in enumerate(map_desc) for c, cell in enumerate(line) if cell == 1]
    for step, move in enumerate(moves):
        if stop_at_goal and step == _FROZENLAKE_MAX_STEPS:
            return "timeout"
        new_row, new_column = row + MOVES[move][0], column + MOVES[move][1]
        if not (0 <= new_row < len(map_desc) and 0 <= new_column < len(map_desc[new_row])):
            continue
        row, column = new_row, new_column
        if map_desc[row][column] == -1:
            return "hole"
        if stop_at_goal and map_desc[row][column] == 2:
            return "goal"
    return "goal" if map_desc[row][column] == 2 else "short"


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Vsp(evaluate.Metric):
    def _info(self):
        if self.config_name not in ("default", "frozenlake"):
            raise KeyError(f"Unknown VSP configuration {self.config_name!r}: use 'default' or 'frozenlake'.")
        return benchmark_info(
            _DESCRIPTION,
            _CITATION,
            _KWARGS_DESCRIPTION,
            references={"map_desc": datasets.List(datasets.List(datasets.Value("int32")))},
            reference_urls=["https://arxiv.org/abs/2407.01863", "https://arxiv.org/abs/2506.17218"],
            codebase_urls=[
                "https://github.com/UCSB-NLP-Chang/Visual-Spatial-Planning",
                "https://github.com/UMass-Embodied-AGI/Mirage",
            ],
            homepage="https://github.com/UCSB-NLP-Chang/Visual-Spatial-Planning",
        )

    def _compute(self, predictions, references):
        by_size = defaultdict(list)
        holes = unparsed = 0
        for prediction, reference in join_by_id(predictions, references):
            grid = reference["map_desc"]
            cells = [cell for line in grid for cell in line]
            if cells.count(1) != 1 or cells.count(2) != 1:
                raise ValueError(f"map_desc of id {reference['id']!r} needs exactly one start (1) and one goal (2).")
            content = boxed_content(prediction["prediction"] or "") or ""
            moves = "".join(char for char in content.upper() if char in MOVES)
            unparsed += not moves
            outcome = walk(grid, moves, stop_at_goal=self.config_name == "frozenlake")
            holes += outcome == "hole"
            by_size[f"{len(grid)}x{len(grid)}"].append(outcome == "goal")
        return {
            "accuracy": mean([flag for solved in by_size.values() for flag in solved]),
            **accuracy_by_group(by_size),
            "num_questions": sum(len(s) for s in by_size.values()),
            "fell_in_hole": holes,
            "unparsed": unparsed,
        }
