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
"""Reads BLINK from its Hub layout (`BLINK-Benchmark/BLINK`): `<data_root>/<Task>/<split>-*.parquet`."""

from pathlib import Path

import datasets
import pyarrow.parquet as pq

from ..loader_utils import IMAGE, STRINGS, PathLike, check_fields, to_dataset


_IMAGE_COLUMNS = ("image_1", "image_2", "image_3", "image_4")


def load(
    data_root: PathLike, tasks: list[str] | None = None, split: str = "val", require_images: bool = True
) -> datasets.Dataset:
    """
    Reads BLINK in its Hub layout: one folder per task, each holding `<split>-*.parquet`.

    Each parquet file has the columns `idx`, `question`, `sub_task`, `image_1` to `image_4` (unused ones empty),
    `choices`, `answer` (`"(A)"`...), `prompt` and `explanation`.

    Args:
        data_root (`str` or `os.PathLike`):
            The dataset folder holding one folder per task.
        tasks (`list[str]`, *optional*):
            Task folders to read, e.g. `["Relative_Depth"]`; by default every folder with `<split>-*.parquet`.
        split (`str`, *optional*, defaults to `"val"`):
            `"val"` (answers public) or `"test"` (answers hidden).
        require_images (`bool`, *optional*, defaults to `True`):
            Raise when a row has no `image_1`; when `False` such a row gets an empty image list.

    Returns:
        `datasets.Dataset`: `id` (`idx`), `image` (list of the row's images, in order), `question` (`prompt`, the
        question with its lettered choices as BLINK presents them), `answer`, `task` (the folder name, e.g.
        `"Counting"`) and `choices`.

    Raises:
        `FileNotFoundError`: a task folder or its parquet file is missing.
        `ValueError`: a column or a row's first image is missing; the message names the file or the `idx`.
    """
    root = Path(data_root)
    if tasks is None:
        folders = sorted(folder for folder in root.iterdir() if folder.is_dir()) if root.is_dir() else []
        tasks = [folder.name for folder in folders if any(folder.glob(f"{split}-*.parquet"))]
        if not tasks:
            raise FileNotFoundError(f"No BLINK task folder with {split}-*.parquet under {root}.")
    columns = ("idx", "prompt", "choices", "answer", "image_1")
    data: dict[str, list] = {key: [] for key in ("id", "image", "question", "answer", "task", "choices")}
    for task in tasks:
        files = sorted((root / task).glob(f"{split}-*.parquet"))
        if not files:
            raise FileNotFoundError(f"BLINK task {task!r}: no {split}-*.parquet in {root / task}.")
        for path in files:
            table = pq.read_table(path)
            missing = [column for column in columns if column not in table.column_names]
            if missing:
                raise ValueError(f"{path} has no column(s) {missing}.")
            for row in table.to_pylist():
                check_fields(row, ("idx", "prompt", "choices", "answer"), f"{path.name} row {row.get('idx')!r}")
                images = [row[key] for key in _IMAGE_COLUMNS if row.get(key)]
                if not images and require_images:
                    raise ValueError(f"BLINK {row['idx']!r} ({path}) has no 'image_1'.")
                data["id"].append(row["idx"])
                data["image"].append(images)
                data["question"].append(row["prompt"])
                data["answer"].append(row["answer"])
                data["task"].append(task)
                data["choices"].append(row["choices"])
    features = {"image": datasets.List(IMAGE), "task": datasets.Value("string"), "choices": STRINGS}
    return to_dataset(data, features, root)


__all__ = ["load"]
