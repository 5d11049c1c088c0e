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
"""Reads MMStar: its Hub parquet (`Lin-Chen/MMStar`), or a VLMEvalKit-style `.tsv`, `.xlsx` or `.jsonl`."""

import base64
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq

from ..loader_utils import IMAGE, STRINGS, PathLike, check_fields, check_file, lettered_options, read_jsonl, to_dataset


# Most sources list "Options: A: ..., B: ..."; the MathVista ones "Choices:" then one "(A) ..." per line.
_INLINE_OPTIONS = r"(?:^|,\s)([A-D]):\s(.*?)(?=,\s[A-D]:\s|$)"
_LINE_OPTIONS = r"^\(([A-D])\)\s*(.+)$"


def _read_table(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    import pandas as pd

    if path.suffix in (".xlsx", ".xls"):
        frame = pd.read_excel(path)
    elif path.suffix == ".tsv":
        frame = pd.read_csv(path, sep="\t")
    else:
        raise ValueError(f"Unsupported MMStar file {path}: use .parquet, .jsonl, .xlsx or .tsv.")
    return [{key: None if pd.isna(value) else value for key, value in row.items()} for row in frame.to_dict("records")]


def load(data_root: PathLike, require_images: bool = True) -> datasets.Dataset:
    """
    Reads MMStar: its Hub parquet (`mmstar.parquet`: `index`, `question`, `image`, `answer`, `category`,
    `l2_category`, `meta_info`), or a VLMEvalKit-style `.tsv` (base64 `image`), `.xlsx` or `.jsonl`.

    Args:
        data_root (`str` or `os.PathLike`):
            The file, or a folder holding `mmstar.parquet` (else its only `*.parquet`).
        require_images (`bool`, *optional*, defaults to `True`):
            Raise when a row has no image (e.g. a submission `.xlsx`); when `False` its `image` is `None`.

    Returns:
        `datasets.Dataset`: `id` (`index`), `image`, `question` (with its inline `"Options: A: ..., B: ..."`),
        `answer` (`"A"` to `"D"`), `category`, `l2_category` and `options` (read from the question; empty when they
        cannot be read unambiguously).

    Raises:
        `FileNotFoundError`: no such file, or no parquet file in the folder.
        `ValueError`: a row lacks a field (or its image, with `require_images`); the message names its `index`.
    """
    path = Path(data_root)
    if path.is_dir():
        candidates = (
            [path / "mmstar.parquet"] if (path / "mmstar.parquet").is_file() else sorted(path.glob("*.parquet"))
        )
        if len(candidates) != 1:
            raise FileNotFoundError(f"Expected mmstar.parquet (or exactly one *.parquet) in {path}.")
        path = candidates[0]
    check_file(path, "MMStar file")
    data: dict[str, list] = {
        key: [] for key in ("id", "image", "question", "answer", "category", "l2_category", "options")
    }
    for row in _read_table(path):
        where = f"{path.name} row with index {row.get('index')!r}"
        check_fields(row, ("index", "question", "answer", "category", "l2_category"), where)
        index = str(int(row["index"]))
        image = row.get("image")
        if isinstance(image, str):
            # VLMEvalKit TSVs hold the image as base64 text.
            image = {"bytes": base64.b64decode(image), "path": None}
        if image is None and require_images:
            raise ValueError(f"MMStar index {index} in {path} has no 'image' field.")
        data["id"].append(index)
        data["image"].append(image)
        data["question"].append(row["question"])
        data["answer"].append(str(row["answer"]).strip())
        data["category"].append(row["category"])
        data["l2_category"].append(row["l2_category"])
        inline = lettered_options(row["question"].rpartition("Options:")[2].strip(), _INLINE_OPTIONS)
        data["options"].append(inline or lettered_options(row["question"], _LINE_OPTIONS))
    features = {
        "image": IMAGE,
        "category": datasets.Value("string"),
        "l2_category": datasets.Value("string"),
        "options": STRINGS,
    }
    return to_dataset(data, features, path)


__all__ = ["load"]
