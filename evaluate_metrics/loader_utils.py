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
"""
What the benchmark loaders (`evaluate_metrics/<name>/loader.py`) share: checks that name the missing file, field or
row, a strict JSONL reader, lettered-option parsing, and the dataset they all return.

Every loader returns a `datasets.Dataset` with the columns `id`, `image` (`datasets.Image`, or a list of them),
`question` (the prompt with its options, as the benchmark presents it) and `answer`, plus the fields its evaluate
module groups by, so that the rows can be handed to the module as references unchanged. Nothing is downloaded.
"""

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import datasets


logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

IMAGE = datasets.Image()
STRINGS = datasets.List(datasets.Value("string"))


def check_file(path: Path, what: str) -> Path:
    """`path`, or a `FileNotFoundError` that names `what` and the path."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def check_fields(row: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    """Raise a `ValueError` naming `where` and every field of `fields` that `row` lacks (or holds as `None`)."""
    missing = [field for field in fields if row.get(field) is None]
    if missing:
        raise ValueError(f"{where} has no {', '.join(repr(field) for field in missing)} field.")


def image_file(path: Path, require_images: bool, where: str) -> str | None:
    """`path` as a string when the file exists; else `None`, or a `FileNotFoundError` with `require_images`."""
    if path.is_file():
        return str(path)
    if require_images:
        raise FileNotFoundError(f"Image of {where} not found: {path}")
    return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """
    The rows of a benchmark's JSONL file, read as they are: a line that is not JSON is an error naming the file and
    the line (a benchmark file is input, never repaired or partly read).
    """
    rows = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg}).") from error
    return rows


def lettered_options(text: str, pattern: str) -> list[str]:
    """
    Option texts in letter order, or `[]` unless the letters run A, B, C... (a, b, ...) without a gap.

    Args:
        text (`str`):
            The text holding the options.
        pattern (`str`):
            A regular expression (read with `re.MULTILINE`) with two groups: the letter and the option text.

    Example:

    ```python
    >>> lettered_options("(a) Open (b) Closed", r"\\(([a-z])\\)\\s*(.*?)\\s*(?=\\([a-z]\\)|$)")
    ['Open', 'Closed']
    >>> lettered_options("(a) Open (c) Closed", r"\\(([a-z])\\)\\s*(.*?)\\s*(?=\\([a-z]\\)|$)")
    []

    ```
    """
    found = re.findall(pattern, text, flags=re.MULTILINE)
    letters = [letter.upper() for letter, _ in found]
    if not letters or letters != [chr(ord("A") + position) for position in range(len(letters))]:
        return []
    return [option.strip() for _, option in found]


def to_dataset(data: dict[str, list], features: dict[str, Any], source: Path) -> datasets.Dataset:
    """
    The loaded columns as a `datasets.Dataset`; `id`, `question` and `answer` are strings, `features` types the rest.
    """
    strings = {key: datasets.Value("string") for key in ("id", "question", "answer")}
    dataset = datasets.Dataset.from_dict(data, features=datasets.Features({**strings, **features}))
    logger.info("Loaded %d rows from %s.", len(dataset), source)
    return dataset


__all__ = [
    "IMAGE",
    "STRINGS",
    "PathLike",
    "check_fields",
    "check_file",
    "image_file",
    "lettered_options",
    "read_jsonl",
    "to_dataset",
]
