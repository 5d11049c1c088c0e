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
"""Reads a split of the shapes task as `lavit_cli.task.write_jsonl_source` writes it."""

from pathlib import Path

import datasets

from ..loader_utils import IMAGE, PathLike, check_fields, check_file, image_file, read_jsonl, to_dataset


def load(data_root: PathLike, require_images: bool = True) -> datasets.Dataset:
    """
    Reads `source.jsonl` (rows `question_id`, `image` relative to the file's folder, `question`, `answer`,
    `question_type`, `bbox`) and its `images/`.

    Args:
        data_root (`str` or `os.PathLike`):
            The jsonl file, or the folder holding `source.jsonl` (e.g. `lavit demo`'s `task/test`).
        require_images (`bool`, *optional*, defaults to `True`):
            Raise on a missing image; when `False` its `image` is `None`.

    Returns:
        `datasets.Dataset`: `id` (`question_id`), `image`, `question`, `answer` and `question_type`.

    Raises:
        `FileNotFoundError`: the jsonl, or an image with `require_images`, is missing; the message gives the path.
        `ValueError`: a row lacks a field; the message names the line.
    """
    path = Path(data_root)
    path = check_file(path / "source.jsonl" if path.is_dir() else path, "Shapes source file")
    data: dict[str, list] = {key: [] for key in ("id", "image", "question", "answer", "question_type")}
    for number, row in enumerate(read_jsonl(path), start=1):
        check_fields(
            row, ("question_id", "image", "question", "answer", "question_type"), f"{path.name} line {number}"
        )
        row_id = str(row["question_id"])
        data["id"].append(row_id)
        data["image"].append(image_file(path.parent / row["image"], require_images, f"shapes item {row_id!r}"))
        data["question"].append(row["question"])
        data["answer"].append(row["answer"])
        data["question_type"].append(row["question_type"])
    return to_dataset(data, {"image": IMAGE, "question_type": datasets.Value("string")}, path)


__all__ = ["load"]
