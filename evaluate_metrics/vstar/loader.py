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
"""Reads V* Bench (`craigwu/vstar_bench` on the Hub) from either of its two official layouts."""

import json
from pathlib import Path

import datasets

from ..loader_utils import (
    IMAGE,
    STRINGS,
    PathLike,
    check_fields,
    check_file,
    image_file,
    lettered_options,
    read_jsonl,
    to_dataset,
)


_CATEGORIES = ("direct_attributes", "relative_position")
# The prompt of V*'s `test_questions.jsonl`, used for the per-category layout too.
_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def load(data_root: PathLike, require_images: bool = True) -> datasets.Dataset:
    """
    Reads V* Bench from either of its two official layouts.

    - `<data_root>/test_questions.jsonl` (preferred): one row per question, `{"question_id", "image":
      "direct_attributes/sa_4690.jpg", "text": "<question>\\n(A) ...\\n(B) ...\\n<instruction>", "category",
      "label": "A"}`, images relative to `data_root`.
    - Otherwise the per-category folders read by V*'s `vstar_bench_eval.py`: `<data_root>/<category>/<name>.jpg`
      beside `<name>.json` = `{"question", "options", "target_object", "bbox"}`, whose first option is the correct
      one. The question is then written in the `test_questions.jsonl` format with the options in file order, so the
      answer is always `"A"`, and `id` is `"<category>/<name>"`.

    Args:
        data_root (`str` or `os.PathLike`):
            The dataset folder.
        require_images (`bool`, *optional*, defaults to `True`):
            Raise on a missing image; when `False` its `image` is `None`.

    Returns:
        `datasets.Dataset`: `id`, `image`, `question`, `answer` (the option letter), `category` and `options`.

    Raises:
        `FileNotFoundError`: neither layout is present, or an annotation or required image is missing.
        `ValueError`: a row lacks a field or its options cannot be read; the message names the row.
    """
    root = Path(data_root)
    data: dict[str, list] = {key: [] for key in ("id", "image", "question", "answer", "category", "options")}
    jsonl = root / "test_questions.jsonl"
    if jsonl.is_file():
        for number, row in enumerate(read_jsonl(jsonl), start=1):
            where = f"{jsonl.name} line {number}"
            check_fields(row, ("question_id", "image", "text", "category", "label"), where)
            row_id = str(row["question_id"])
            options = lettered_options(row["text"], r"^\(([A-Z])\)\s*(.+)$")
            if len(options) < 2:
                raise ValueError(f"{where} (question_id {row_id!r}): no '(A) ...' option lines in text.")
            data["id"].append(row_id)
            data["image"].append(image_file(root / row["image"], require_images, f"V* question_id {row_id!r}"))
            data["question"].append(row["text"])
            data["answer"].append(row["label"])
            data["category"].append(row["category"])
            data["options"].append(options)
    elif any((root / category).is_dir() for category in _CATEGORIES):
        for category in _CATEGORIES:
            folder = root / category
            if not folder.is_dir():
                raise FileNotFoundError(f"V* category folder not found: {folder}")
            for image in sorted(path for path in folder.iterdir() if path.suffix != ".json"):
                annotation = check_file(image.with_suffix(".json"), f"V* annotation of {image.name}")
                row = json.loads(annotation.read_text(encoding="utf-8"))
                check_fields(row, ("question", "options"), str(annotation))
                lettered = "\n".join(f"({chr(ord('A') + i)}) {option}" for i, option in enumerate(row["options"]))
                data["id"].append(f"{category}/{image.stem}")
                data["image"].append(str(image))
                data["question"].append(f"{row['question']}\n{lettered}\n{_INSTRUCTION}")
                # vstar_bench_eval.py scores `option_chosen == 0`: the first option is the correct one.
                data["answer"].append("A")
                data["category"].append(category)
                data["options"].append(list(row["options"]))
    else:
        raise FileNotFoundError(f"No V* Bench under {root}: expected {jsonl} or the folders {', '.join(_CATEGORIES)}.")
    return to_dataset(data, {"image": IMAGE, "category": datasets.Value("string"), "options": STRINGS}, root)


__all__ = ["load"]
