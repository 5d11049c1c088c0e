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
"""Reads HallusionBench (tianyi-lab/HallusionBench): `HallusionBench.json` and the figures of `hallusion_bench.zip`."""

import json
from pathlib import Path

import datasets

from ..loader_utils import IMAGE, PathLike, check_fields, check_file, to_dataset


_KEYS = ("category", "subcategory", "set_id", "figure_id", "question_id")


def load(data_root: PathLike, questions_file: PathLike | None = None, require_images: bool = True) -> datasets.Dataset:
    """
    Reads `HallusionBench.json` and its figures.

    A row's `filename` (e.g. `"./VS/chart/0_1.png"`) is looked up under `data_root`, then under
    `data_root/hallusion_bench` (where the zip unpacks). Rows with `visual_input` `"0"` are asked without an image on
    purpose: their `image` is `None`.

    Args:
        data_root (`str` or `os.PathLike`):
            The folder holding `HallusionBench.json` and the figures.
        questions_file (`str` or `os.PathLike`, *optional*):
            Another copy of the questions instead of `<data_root>/HallusionBench.json`.
        require_images (`bool`, *optional*, defaults to `True`):
            Raise on a missing figure; when `False` its `image` is `None`.

    Returns:
        `datasets.Dataset`: `id` (`"<category>_<subcategory>_<set_id>_<figure_id>_<question_id>"`, the authors'
        per-question key), `image`, `question`, `answer` (`"yes"`/`"no"` from `gt_answer`), `category`,
        `subcategory`, `set_id`, `figure_id` and `question_id`.

    Raises:
        `FileNotFoundError`: the json, or a figure with `require_images`, is missing; the message gives the path.
        `ValueError`: a row lacks a field or has a `gt_answer` other than "0"/"1"; the message names the row.
    """
    root = Path(data_root)
    path = check_file(Path(questions_file) if questions_file else root / "HallusionBench.json", "HallusionBench file")
    data: dict[str, list] = {key: [] for key in ("id", "image", "question", "answer", *_KEYS)}
    for number, row in enumerate(json.loads(path.read_text(encoding="utf-8")), start=1):
        where = f"{path.name} question {number}"
        check_fields(row, (*_KEYS, "question", "gt_answer", "visual_input"), where)
        row_id = "_".join(str(row[key]) for key in _KEYS)
        if str(row["gt_answer"]) not in ("0", "1"):
            raise ValueError(f"{where} ({row_id}): gt_answer {row['gt_answer']!r} is not '0' or '1'.")
        image = None
        if str(row["visual_input"]) != "0":
            check_fields(row, ("filename",), where)
            tried = [root / row["filename"], root / "hallusion_bench" / row["filename"]]
            image = next((str(candidate) for candidate in tried if candidate.is_file()), None)
            if image is None and require_images:
                raise FileNotFoundError(
                    f"Figure of HallusionBench {row_id} not found: tried {', '.join(map(str, tried))}"
                )
        data["id"].append(row_id)
        data["image"].append(image)
        data["question"].append(row["question"])
        data["answer"].append("yes" if str(row["gt_answer"]) == "1" else "no")
        for key in _KEYS:
            data[key].append(str(row[key]))
    return to_dataset(data, {"image": IMAGE, **{key: datasets.Value("string") for key in _KEYS}}, path)


__all__ = ["load"]
