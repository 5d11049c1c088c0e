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
"""VSP spatial planning: plans walked on the 400 real maps of Mirage's `test_direct.jsonl`."""

import json
import random

import evaluate
import pytest
from PIL import Image

from evaluate_metrics import load_benchmark, module_path


MOVES = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}


@pytest.fixture(scope="module")
def jsonl(bench_samples):
    return bench_samples / "vsp" / "test_direct.jsonl"


@pytest.fixture(scope="module")
def vsp():
    return evaluate.load(module_path("vsp"))


@pytest.fixture(scope="module")
def frozenlake():
    return evaluate.load(module_path("vsp"), "frozenlake")


@pytest.fixture(scope="module")
def rows(jsonl):
    return load_benchmark("vsp", jsonl, require_images=False)


@pytest.fixture(scope="module")
def references(rows):
    return rows.remove_columns(["image", "question", "answer"]).to_list()


def _cell(grid, position):
    row, column = position
    return grid[row][column] if 0 <= row < len(grid) and 0 <= column < len(grid[row]) else None


def _start(grid):
    return next((r, c) for r, line in enumerate(grid) for c, value in enumerate(line) if value == 1)


def _score(metric, references, plans):
    predictions = [{"id": row_id, "prediction": f"My plan: \\boxed{{{plan}}}"} for row_id, plan in plans.items()]
    return metric.compute(predictions=predictions, references=references)


def test_loader_reads_the_mirage_file(rows):
    assert rows.num_rows == 400 and len(set(rows["id"])) == 400
    # map_id repeats across grid sizes, so ids carry the level.
    assert rows[0]["id"] == "level3_31" and rows[0]["map_desc"] == [[2, -1, 1], [0, 0, 0], [0, 0, 0]]
    assert rows[0]["question"].rstrip().endswith("The final answer MUST BE put in \\boxed{}.")
    assert sorted({len(grid) for grid in rows["map_desc"]}) == [3, 4, 5, 6]


def test_breadth_first_plans_are_shortest_and_valid(rows):
    for grid, plan in zip(rows["map_desc"], rows["answer"], strict=True):
        position, seen = _start(grid), set()
        for move in plan.split(","):
            position = (position[0] + MOVES[move][0], position[1] + MOVES[move][1])
            assert _cell(grid, position) not in (None, -1) and position not in seen
            seen.add(position)
        assert _cell(grid, position) == 2
        # No plan can be shorter than the Manhattan distance; a longer BFS plan detours around holes.
        goal = next((r, c) for r, line in enumerate(grid) for c, value in enumerate(line) if value == 2)
        assert len(plan.split(",")) >= abs(goal[0] - _start(grid)[0]) + abs(goal[1] - _start(grid)[1])


def test_gold_plans_solve_every_map(vsp, frozenlake, rows, references):
    plans = dict(zip(rows["id"], rows["answer"], strict=True))
    for metric in (vsp, frozenlake):
        results = _score(metric, references, plans)
        assert results == {
            "accuracy": 1.0,
            "accuracy_3x3": 1.0,
            "accuracy_4x4": 1.0,
            "accuracy_5x5": 1.0,
            "accuracy_6x6": 1.0,
            "num_questions": 400,
            "fell_in_hole": 0,
            "unparsed": 0,
        }
    shuffled = random.Random(0).sample(list(plans.items()), len(plans))
    assert _score(vsp, references, dict(shuffled))["accuracy"] == 1.0


def test_plans_that_stop_short_fail(vsp, rows, references):
    plans = {row_id: plan.rpartition(",")[0] for row_id, plan in zip(rows["id"], rows["answer"], strict=True)}
    results = _score(vsp, references, plans)
    one_move = sum("," not in plan for plan in rows["answer"])
    assert results["accuracy"] == 0.0 and results["fell_in_hole"] == 0 and results["unparsed"] == one_move


def test_a_step_into_a_hole_fails_even_if_the_plan_goes_on(vsp, rows, references):
    plans, expected = {}, 0
    for row_id, grid, plan in zip(rows["id"], rows["map_desc"], rows["answer"], strict=True):
        start = _start(grid)
        into_hole = [m for m, (dr, dc) in MOVES.items() if _cell(grid, (start[0] + dr, start[1] + dc)) == -1]
        if into_hole:
            # Into the hole, back out, then the gold plan: the walk must end at the hole.
            back = {"U": "D", "D": "U", "L": "R", "R": "L"}[into_hole[0]]
            plans[row_id] = f"{into_hole[0]},{back},{plan}"
            expected += 1
        else:
            plans[row_id] = plan
    results = _score(vsp, references, plans)
    assert expected > 100 and results["fell_in_hole"] == expected
    assert results["accuracy"] == (400 - expected) / 400


def test_moves_off_the_grid_are_ignored(vsp, rows, references):
    plans, edited = {}, 0
    for row_id, grid, plan in zip(rows["id"], rows["map_desc"], rows["answer"], strict=True):
        start = _start(grid)
        off_grid = [m for m, (dr, dc) in MOVES.items() if _cell(grid, (start[0] + dr, start[1] + dc)) is None]
        plans[row_id] = ",".join(off_grid * 3 + [plan])
        edited += bool(off_grid)
    assert edited > 200  # most starts lie on an edge of their grid
    assert _score(vsp, references, plans)["accuracy"] == 1.0


def test_walking_past_the_goal_fails_by_default_but_not_in_frozenlake(vsp, frozenlake, rows, references):
    plans, walled_in = {}, 0
    for row_id, grid, plan in zip(rows["id"], rows["map_desc"], rows["answer"], strict=True):
        goal = next((r, c) for r, line in enumerate(grid) for c, value in enumerate(line) if value == 2)
        onward = [m for m, (dr, dc) in MOVES.items() if _cell(grid, (goal[0] + dr, goal[1] + dc)) in (0, 1)]
        # A goal whose other neighbours are all holes or edges keeps the gold plan.
        plans[row_id] = f"{plan},{onward[0]}" if onward else plan
        walled_in += not onward
    assert walled_in < 40
    assert _score(vsp, references, plans)["accuracy"] == walled_in / 400
    assert _score(frozenlake, references, plans)["accuracy"] == 1.0


def test_frozenlake_stops_after_one_hundred_moves(vsp, frozenlake, references):
    grid, (row, column) = references[0]["map_desc"], _start(references[0]["map_desc"])
    off_grid = next(m for m, (dr, dc) in MOVES.items() if _cell(grid, (row + dr, column + dc)) is None)
    # 100 moves that leave the agent in place, then the 4-move gold plan of map level3_31.
    plan = ",".join([off_grid] * 100 + ["D", "L", "L", "U"])
    assert _score(vsp, references[:1], {"level3_31": plan})["accuracy"] == 1.0
    assert _score(frozenlake, references[:1], {"level3_31": plan})["accuracy"] == 0.0


@pytest.mark.parametrize(
    ("answer", "solved", "unparsed"),
    [
        ("\\boxed{D, L, L, U}", True, 0),
        ("\\boxed{DLLU}", True, 0),
        ("\\boxed{down, left, left, up}", True, 0),
        ("\\boxed{\\text{D,L,L,U}}", True, 0),
        ("First \\boxed{L} and finally \\boxed{D,L,L,U}", True, 0),
        ("Down, left, left, up.", False, 1),
        ("\\boxed{}", False, 1),
        ("\\boxed{D, L, L", False, 1),
        ("", False, 1),
        ("\\boxed{L}", False, 0),
    ],
)
def test_plan_extraction(vsp, references, answer, solved, unparsed):
    results = vsp.compute(predictions=[{"id": "level3_31", "prediction": answer}], references=references[:1])
    assert (results["accuracy"], results["unparsed"]) == (float(solved), unparsed)
    assert results["fell_in_hole"] == (answer == "\\boxed{L}")


def test_grids_without_one_start_and_one_goal_are_refused(vsp):
    with pytest.raises(ValueError, match="map_desc of id 'x' needs exactly one start"):
        vsp.compute(
            predictions=[{"id": "x", "prediction": "\\boxed{R}"}], references=[{"id": "x", "map_desc": [[1, 0]]}]
        )
    with pytest.raises(KeyError, match="Unknown VSP configuration 'mirage'"):
        evaluate.load(module_path("vsp"), "mirage")


def test_loader_finds_images_and_names_missing_ones(tmp_path, jsonl):
    lines = jsonl.read_text().splitlines()[:2]
    (tmp_path / "test_direct.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        FileNotFoundError, match="Image of VSP level3_31 not found: tried .*imgs_test/level3/img/31.png"
    ):
        load_benchmark("vsp", tmp_path)
    # Mirage's tarball puts imgs_test/ beside the jsonl; the rows name it from the repository root.
    for line in lines:
        relative = json.loads(line)["image_input"].removeprefix("./data/vsp_spatial_planning/")
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (30, 30), "white").save(tmp_path / relative)
    rows = load_benchmark("vsp", tmp_path / "test_direct.jsonl")
    assert rows["id"] == ["level3_31", "level3_96"] and rows[1]["image"].size == (30, 30)
    (tmp_path / "test_direct.jsonl").write_text(lines[0] + "\n" + lines[0] + "\n")
    with pytest.raises(ValueError, match="line 2: id 'level3_31' repeats an earlier row"):
        load_benchmark("vsp", tmp_path)
    (tmp_path / "test_direct.jsonl").write_text(json.dumps({"text_input": "Plan?", "map_id": 1, "map_desc": []}))
    with pytest.raises(ValueError, match="line 1 has no 'image_input' field"):
        load_benchmark("vsp", tmp_path)
