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
"""Reads VSP spatial planning as Mirage ships it (`test_direct.jsonl`), the file LaViT's VSP adapter reads."""

from collections import deque
from pathlib import Path

import datasets

from ..loader_utils import IMAGE, PathLike, check_fields, check_file, read_jsonl, to_dataset
from .vsp import MOVES


# Mirage's rows name images relative to its repository root; its tarball puts `imgs_test/` beside the jsonl.
_PREFIX = "./data/vsp_spatial_planning/"
# The order of the breadth-first search that reproduces most of Mirage's training plans.
_SEARCH_ORDER = "ULRD"


def shortest_plan(map_desc: list[list[int]]) -> str | None:
    """
    One shortest plan from the start (1) to the goal (2) avoiding holes (-1), as comma-separated moves, or `None`.

    Breadth-first search trying U, L, R, D in that order.

    Example:

    ```python
    >>> shortest_plan([[2, -1, 1], [0, 0, 0], [0, 0, 0]])
    'D,L,L,U'

    ```
    """
    cells = {(r, c): value for r, line in enumerate(map_desc) for c, value in enumerate(line)}
    start = next(cell for cell, value in cells.items() if value == 1)
    previous: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cells[cell] == 2:
            moves = []
            while previous[cell] is not None:
                cell, move = previous[cell]
                moves.append(move)
            return ",".join(reversed(moves))
        for move in _SEARCH_ORDER:
            step = (cell[0] + MOVES[move][0], cell[1] + MOVES[move][1])
            if cells.get(step, -1) != -1 and step not in previous:
                previous[step] = (cell, move)
                queue.append(step)
    return None


def load(data_root: PathLike, image_root: PathLike | None = None, require_images: bool = True) -> datasets.Dataset:
    """
    Reads `test_direct.jsonl` (`text_input`, `image_input`, `map_id`, `map_desc`).

    `image_input` (e.g. `"./data/vsp_spatial_planning/imgs_test/level3/img/31.png"`) is looked up under
    `image_root`, then, without its `./data/vsp_spatial_planning/` prefix, beside the jsonl file (the tarball layout).

    Args:
        data_root (`str` or `os.PathLike`):
            The jsonl file, or the folder holding `test_direct.jsonl`.
        image_root (`str` or `os.PathLike`, *optional*, defaults to the jsonl's folder):
            The folder `image_input` is relative to (Mirage's repository root).
        require_images (`bool`, *optional*, defaults to `True`):
            Raise on a missing image; when `False` its `image` is `None`.

    Returns:
        `datasets.Dataset`: `id` (`"level<N>_<map_id>"` for an N x N grid: `map_id` repeats across sizes), `image`,
        `question` (`text_input`), `answer` (one shortest plan by breadth-first search, e.g. `"D,L,L,U"`: a
        reference only, since the vsp module accepts any plan that reaches the goal) and `map_desc`.

    Raises:
        `FileNotFoundError`: the jsonl, or an image with `require_images`, is missing; the message gives the path.
        `ValueError`: a row lacks a field, repeats an id, or has no start, goal or path; the message names it.
    """
    path = Path(data_root)
    path = check_file(path / "test_direct.jsonl" if path.is_dir() else path, "VSP jsonl file")
    image_root = Path(image_root) if image_root else path.parent
    data: dict[str, list] = {key: [] for key in ("id", "image", "question", "answer", "map_desc")}
    seen: set[str] = set()
    for number, row in enumerate(read_jsonl(path), start=1):
        where = f"{path.name} line {number}"
        check_fields(row, ("text_input", "image_input", "map_id", "map_desc"), where)
        grid = row["map_desc"]
        row_id = f"level{len(grid)}_{row['map_id']}"
        if row_id in seen:
            raise ValueError(f"{where}: id {row_id!r} repeats an earlier row.")
        seen.add(row_id)
        cells = [cell for line in grid for cell in line]
        plan = shortest_plan(grid) if cells.count(1) == 1 and cells.count(2) == 1 else None
        if plan is None:
            raise ValueError(f"{where} ({row_id}): map_desc needs one start (1), one goal (2) and a path between.")
        tried = [image_root / row["image_input"]]
        if row["image_input"].startswith(_PREFIX):
            tried.append(path.parent / row["image_input"][len(_PREFIX) :])
        image = next((str(candidate) for candidate in tried if candidate.is_file()), None)
        if image is None and require_images:
            raise FileNotFoundError(f"Image of VSP {row_id} not found: tried {', '.join(map(str, tried))}")
        data["id"].append(row_id)
        data["image"].append(image)
        data["question"].append(row["text_input"])
        data["answer"].append(plan)
        data["map_desc"].append(grid)
    features = {"image": IMAGE, "map_desc": datasets.List(datasets.List(datasets.Value("int32")))}
    return to_dataset(data, features, path)


__all__ = ["load", "shortest_plan"]
