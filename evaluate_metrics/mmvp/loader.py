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
"""Reads MMVP from its official layout (`MMVP/MMVP` on the Hub): `Questions.csv` and `MMVP Images/<Index>.jpg`."""

import csv
import re
from pathlib import Path

import datasets

from ..loader_utils import IMAGE, STRINGS, PathLike, check_fields, check_file, image_file, lettered_options, to_dataset


_COLUMNS = ("Index", "Question", "Options", "Correct Answer")


def load(
    data_root: PathLike,
    questions_file: PathLike | None = None,
    images_dir: PathLike | None = None,
    require_images: bool = True,
) -> datasets.Dataset:
    """
    Reads MMVP: `Questions.csv` and `MMVP Images/<Index>.jpg`.

    Args:
        data_root (`str` or `os.PathLike`):
            The folder holding `Questions.csv` and `MMVP Images/`.
        questions_file (`str` or `os.PathLike`, *optional*):
            Another CSV with the same header `Index,Question,Options,Correct Answer` (e.g. one reconstructed from
            another release), instead of `<data_root>/Questions.csv`.
        images_dir (`str` or `os.PathLike`, *optional*, defaults to `<data_root>/MMVP Images`):
            The folder of `<Index>.jpg`.
        require_images (`bool`, *optional*, defaults to `True`):
            Raise on a missing image; when `False` its `image` is `None`.

    Returns:
        `datasets.Dataset`: `id` (the `Index`), `image`, `question` (`"<Question> <Options>"`, the official
        script's prompt), `answer` (`"(a)"`/`"(b)"`), `options` (option texts) and `pair_id` (`str(k)` for Index
        2k-1 and 2k).

    Raises:
        `FileNotFoundError`: the CSV, or an image with `require_images`, is missing; the message gives its path.
        `ValueError`: a column is missing, or a row's Index, Options or Correct Answer cannot be read; the message
            names the row.
    """
    root = Path(data_root)
    path = check_file(Path(questions_file) if questions_file else root / "Questions.csv", "MMVP questions file")
    images = Path(images_dir) if images_dir else root / "MMVP Images"
    data: dict[str, list] = {key: [] for key in ("id", "image", "question", "answer", "options", "pair_id")}
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.DictReader(file)
        missing = [column for column in _COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} has no column(s) {missing}; expected the header {','.join(_COLUMNS)}.")
        for number, row in enumerate(reader, start=2):
            where = f"{path.name} line {number}"
            check_fields(row, _COLUMNS, where)
            if not row["Index"].strip().isdigit():
                raise ValueError(f"{where}: Index {row['Index']!r} is not a positive integer.")
            index = int(row["Index"])
            options = lettered_options(row["Options"], r"\(([a-z])\)\s*(.*?)\s*(?=\([a-z]\)|$)")
            answer = row["Correct Answer"].strip()
            if len(options) < 2 or not re.fullmatch(r"\([a-z]\)", answer):
                raise ValueError(f"{where} (Index {index}): cannot read the options {row['Options']!r} or answer.")
            data["id"].append(str(index))
            data["image"].append(image_file(images / f"{index}.jpg", require_images, f"MMVP Index {index}"))
            data["question"].append(f"{row['Question'].strip()} {row['Options'].strip()}")
            data["answer"].append(answer)
            data["options"].append(options)
            # Rows 2k-1 and 2k ask the same question about the two images of pair k (MMVP paper, Sec. 3).
            data["pair_id"].append(str((index + 1) // 2))
    return to_dataset(data, {"image": IMAGE, "options": STRINGS, "pair_id": datasets.Value("string")}, path)


__all__ = ["load"]
