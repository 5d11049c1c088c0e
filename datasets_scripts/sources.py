"""Question-answer sources for teacher extraction, read into one normalised record type.

Accepted (docs/method.md section 5):

- **Visual-CoT, original 4-turn format**: `image` is `[path, "path###[x1, y1, x2, y2]"]` (or a path) and
  `conversations` is human question (with the "Please provide the bounding box ..." request), gpt `[bbox]`,
  human `<image>`, gpt answer. The answer is the *last* gpt turn; the box is the first gpt turn, normalised to the
  image padded to a square.
- **Visual-CoT, 2-turn variant** (the one the LaViT code reads): human question, gpt `<answer>...</answer>`, plus a
  `bboxes` field (one `[x1, y1, x2, y2]` box, or a list of boxes: several boxes are replaced by the box enclosing
  them all).
- **Plain**: records with image / question / answer fields (column names configurable), from a JSON or JSONL file
  or any `datasets` dataset (a `Dataset` object, a folder saved with `save_to_disk`, or anything `load_dataset`
  reads locally). The image is a path relative to the image root, or an image (PIL, or a `datasets.Image` dict).

A record in none of these formats (an unknown shape, a missing field, a box that is not four non-negative numbers, a
JSONL line that is not JSON or not an object) is kept as a `SourceRecord` whose `error` names the record (its index,
question id and, for JSONL, file and line), so that the extractor counts it as a failure and goes on with the others;
`read_source(..., strict=True)` raises `RecordFormatError` at the first one instead. Content problems of a well-formed
record (empty question, no answer, a missing image) are reported per sample by the extractor.

Boxes. A box whose coordinates all lie in [0, 1] is normalised, in the frame `--bbox_frame` names (Visual-CoT: the
image padded to a centred square). A box with larger coordinates is in pixels: `box_in_frame` normalises it with the
image's size once the image is open, and refuses one that does not fit in the image.
"""

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from lavit_hf.grids import BBOX_FRAMES, box_from_pixels
from lavit_hf.images import to_rgb


logger = logging.getLogger(__name__)

# The request Visual-CoT appends to the question of its first turn; the teacher gets the bare question.
BOX_REQUEST = re.compile(
    r"\s*Please provide the bounding box coordinate of the region that can help you answer the question better\.?\s*$"
)
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
IMAGE_TAG = re.compile(r"^\s*<image>\s*")
# Optional box field of a plain record, in the same frame as Visual-CoT's.
BBOX_FIELD = "bbox"
# A normalised box may overshoot 1 by float rounding; anything larger is read as pixels.
NORMALISED_TOLERANCE = 1e-3
# Errors PIL raises for an image it cannot open or decode (a decompression bomb is not an OSError).
IMAGE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


class RecordFormatError(ValueError):
    """A record that is none of the accepted formats."""


@dataclass
class SourceRecord:
    """One normalised question-answer record.

    Args:
        index (`int`): position in the source (the order of the final dataset).
        key (`str`): deterministic, unique key: `source/question_id` (a `#n` suffix for repeated ids).
        question_id (`str`), source (`str`): the record's own id and where it came from.
        question (`str`), answer (`str`): as given (may be empty: the extractor reports that as a failure).
        image_path (`str`, *optional*): absolute image path, when the image is a file.
        image (`Any`, *optional*): an in-memory image (PIL or a `datasets.Image` dict) when it is not a file.
        bbox (`list[float]`): `[x1, y1, x2, y2]`, normalised (see `box_in_frame`) or in pixels, or empty.
        error (`str`, *optional*): why the record is in no accepted format (then the other fields are empty).
    """

    index: int
    key: str
    question_id: str
    source: str
    question: str
    answer: str
    image_path: str | None = None
    image: Any = None
    bbox: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class ColumnNames:
    """Column names of a plain source."""

    image: str = "image"
    question: str = "question"
    answer: str = "answer"
    question_id: str = "question_id"


def _raw_question_id(raw: Any, columns: ColumnNames) -> Any:
    if not isinstance(raw, dict):
        return None
    return raw.get("question_id", raw.get(columns.question_id, raw.get("id")))


def _where(index: int, raw: Any, columns: ColumnNames, location: str | None = None) -> str:
    where = f"record {index} (question_id={_raw_question_id(raw, columns)!r})"
    return f"{where} at {location}" if location else where


def parse_box(value: Any, where: str) -> list[float]:
    """A box from `[x1, y1, x2, y2]`, its string form, or a list of boxes (replaced by their enclosing box).

    Raises:
        `RecordFormatError`: naming `where`, unless the box is four finite, non-negative numbers with x1 < x2 and
        y1 < y2 (whether they are normalised or pixels is decided with the image, by `box_in_frame`).
    """
    if isinstance(value, str):
        try:
            value = json.loads(value.strip())
        except json.JSONDecodeError as error:
            raise RecordFormatError(f"{where}: box {value!r} is not a list of 4 numbers.") from error
    if isinstance(value, list) and value and all(isinstance(b, list) for b in value):
        boxes = [parse_box(b, where) for b in value]
        return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
    numbers = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not (numbers and len(value) == 4):
        raise RecordFormatError(f"{where}: box {value!r} is not [x1, y1, x2, y2].")
    box = [float(v) for v in value]
    if not all(math.isfinite(v) and v >= 0 for v in box):
        raise RecordFormatError(f"{where}: box {box} has a negative or non-finite coordinate.")
    if not (box[0] < box[2] and box[1] < box[3]):
        raise RecordFormatError(f"{where}: box {box} is empty or reversed (it needs x1 < x2 and y1 < y2).")
    return box


def box_in_frame(box: list[float], image_size: tuple[int, int], frame: str, where: str) -> tuple[list[float], bool]:
    """The box normalised in `frame`, and whether it was given in pixels.

    A box whose coordinates all lie in [0, 1] is already normalised (in `frame`, which only the source can know). A
    box with a larger coordinate is in pixels of the image: it is normalised to `frame` (for `square-center`, the
    image padded to a centred square, as Visual-CoT stores its boxes).

    Args:
        box (`list[float]`): `[x1, y1, x2, y2]` from `parse_box`.
        image_size (`tuple[int, int]`): the original image's `(width, height)`.
        frame (`str`): one of `lavit_hf.grids.BBOX_FRAMES`.
        where (`str`): names the record in an error.

    Raises:
        `RecordFormatError`: a pixel box that does not fit in the image.

    Example:

    ```python
    >>> box_in_frame([0.1, 0.2, 0.3, 0.4], (200, 100), "square-center", "record 0")
    ([0.1, 0.2, 0.3, 0.4], False)
    >>> box_in_frame([0, 0, 200, 100], (200, 100), "square-center", "record 0")  # the whole image, in its square
    ([0.0, 0.25, 1.0, 0.75], True)

    ```
    """
    if frame not in BBOX_FRAMES:
        raise ValueError(f"bbox frame {frame!r}: expected one of {BBOX_FRAMES}.")
    if max(box) <= 1 + NORMALISED_TOLERANCE:
        return [min(v, 1.0) for v in box], False
    width, height = image_size
    if box[2] > width or box[3] > height:
        raise RecordFormatError(
            f"{where}: box {box} is neither normalised (all coordinates in [0, 1]) nor in pixels of the "
            f"{width}x{height} image (it reaches beyond it)."
        )
    return box_from_pixels(box, image_size, frame), True


def _turns(raw: dict, where: str) -> list[tuple[str, str]]:
    turns = raw["conversations"]
    if not isinstance(turns, list) or not all(isinstance(t, dict) and "from" in t and "value" in t for t in turns):
        raise RecordFormatError(f"{where}: `conversations` must be a list of {{'from', 'value'}} turns.")
    roles = [t["from"] for t in turns]
    if len(turns) not in (2, 4) or roles != ["human", "gpt"] * (len(turns) // 2):
        raise RecordFormatError(
            f"{where}: Visual-CoT records have 4 turns (question, box, <image>, answer) or 2 turns "
            f"(question, <answer>) alternating human/gpt; got roles {roles}."
        )
    return [(t["from"], str(t["value"])) for t in turns]


def _viscot_image(raw: dict, where: str) -> str:
    image = raw.get("image")
    if isinstance(image, list) and image and isinstance(image[0], str):
        return image[0].split("###")[0]
    if isinstance(image, str):
        return image.split("###")[0]
    raise RecordFormatError(f"{where}: Visual-CoT `image` must be a path or a list starting with one; got {image!r}.")


def _viscot(raw: dict, where: str) -> dict[str, Any]:
    turns = _turns(raw, where)
    question = BOX_REQUEST.sub("", IMAGE_TAG.sub("", turns[0][1])).strip()
    if len(turns) == 4:
        bbox = parse_box(turns[1][1], where)
        answer = turns[3][1].strip()
    else:
        if "bboxes" not in raw:
            raise RecordFormatError(f"{where}: a 2-turn Visual-CoT record needs a `bboxes` field.")
        bbox = parse_box(raw["bboxes"], where) if raw["bboxes"] else []
        match = ANSWER_TAG.search(turns[1][1])
        answer = (match.group(1) if match else turns[1][1]).strip()
    return {"question": question, "answer": answer, "image": _viscot_image(raw, where), "bbox": bbox}


def _plain(raw: dict, columns: ColumnNames, where: str) -> dict[str, Any]:
    missing = [c for c in (columns.image, columns.question, columns.answer) if c not in raw]
    if missing:
        raise RecordFormatError(
            f"{where}: neither a Visual-CoT record (no `conversations`) nor a plain record: missing {missing} "
            f"among its fields {sorted(raw)}."
        )
    answer = raw[columns.answer]
    if isinstance(answer, list):
        # Some QA sets store several reference answers; the first is the reference kept in the dataset.
        answer = answer[0] if answer else ""
    return {
        "question": "" if raw[columns.question] is None else str(raw[columns.question]).strip(),
        "answer": "" if answer is None else str(answer).strip(),
        "image": raw[columns.image],
        "bbox": parse_box(raw[BBOX_FIELD], where) if raw.get(BBOX_FIELD) else [],
    }


def normalise_record(
    index: int,
    raw: Any,
    source_name: str,
    image_root: str | Path | None,
    columns: ColumnNames | None = None,
    location: str | None = None,
) -> SourceRecord:
    """One raw record (any accepted format) as a `SourceRecord` (its key is made unique by `read_source`).

    Raises:
        `RecordFormatError`: naming the record (index, question id, and `location` when given) if it is in no
        accepted format.
    """
    columns = columns or ColumnNames()
    where = _where(index, raw, columns, location)
    if not isinstance(raw, dict):
        raise RecordFormatError(f"{where}: expected a mapping of fields, got {type(raw).__name__}.")
    fields = _viscot(raw, where) if "conversations" in raw else _plain(raw, columns, where)
    qid = _raw_question_id(raw, columns)
    qid = str(index) if qid is None else str(qid)
    source = str(raw.get("dataset") or source_name)
    record = SourceRecord(index, f"{source}/{qid}", qid, source, fields["question"], fields["answer"])
    record.bbox = fields["bbox"]
    image = fields["image"]
    if image is None or image == "":
        return record  # no image: reported as a failure ("missing image") by the extractor, not a format error
    if isinstance(image, str):
        record.image_path = str(Path(image_root) / image) if image_root is not None else image
    elif isinstance(image, dict) and image.get("bytes") is None and image.get("path"):
        record.image_path = str(Path(image_root) / image["path"]) if image_root is not None else image["path"]
    elif isinstance(image, (Image.Image, dict)):
        record.image = image
    else:
        raise RecordFormatError(f"{where}: image {type(image).__name__} is neither a path nor an image.")
    return record


def malformed_record(
    index: int, raw: Any, source_name: str, error: RecordFormatError, columns: ColumnNames | None = None
) -> SourceRecord:
    """A placeholder for a record in no accepted format: it keeps its index and id, so the failure is counted."""
    qid = _raw_question_id(raw, columns or ColumnNames())
    qid = str(index) if qid is None else str(qid)
    source = str(raw.get("dataset") or source_name) if isinstance(raw, dict) else source_name
    return SourceRecord(index, f"{source}/{qid}", qid, source, "", "", error=str(error))


def unique_keys(records: list[SourceRecord]) -> list[SourceRecord]:
    """Make keys unique deterministically: the n-th repeat of a key (in source order) gets the suffix `#n`."""
    seen: Counter = Counter()
    for record in records:
        seen[record.key] += 1
        if seen[record.key] > 1:
            logger.warning("Question id of %s repeated: key %s#%d", record.key, record.key, seen[record.key] - 1)
            record.key = f"{record.key}#{seen[record.key] - 1}"
    return records


def _jsonl_lines(path: Path) -> Iterator[tuple[Any, str]]:
    """`(record, location)` for each non-blank line; a line that is not JSON yields a `RecordFormatError`."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            location = f"{path}, line {number}"
            try:
                yield json.loads(line.decode("utf-8")), location
            except json.JSONDecodeError as error:
                reason = f"not a JSON record ({error.msg}, column {error.colno})"
                yield RecordFormatError(f"{location}: {reason}."), location
            except UnicodeDecodeError as error:
                reason = f"not UTF-8 text ({error.reason} at byte {error.start})"
                yield RecordFormatError(f"{location}: {reason}."), location


def _raw_records(source: Any, split: str) -> tuple[Iterable[tuple[Any, str | None]], str]:
    """`(record, location)` pairs of a source, and its default name."""
    import datasets

    if isinstance(source, datasets.Dataset):
        return ((row, None) for row in source), (source.info.dataset_name or "dataset")
    path = Path(source)
    if path.is_file() and path.suffix == ".jsonl":
        return _jsonl_lines(path), path.stem
    if path.is_file() and path.suffix == ".json":
        with open(path, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as error:
                raise RecordFormatError(f"{path}: not valid JSON ({error}).") from error
        if not isinstance(data, list):
            raise RecordFormatError(f"{path}: a JSON source must be a list of records, got {type(data).__name__}.")
        return ((item, None) for item in data), path.stem
    if path.is_dir() and (path / "dataset_info.json").is_file():
        return ((row, None) for row in datasets.load_from_disk(str(path))), path.name
    return ((row, None) for row in datasets.load_dataset(str(source), split=split)), path.name


def read_source(
    source: Any,
    image_root: str | Path | None = None,
    source_name: str | None = None,
    columns: ColumnNames | None = None,
    split: str = "train",
    limit: int | None = None,
    strict: bool = False,
) -> list[SourceRecord]:
    """Read and normalise every record of a source (no image is opened here).

    Args:
        source (`str`, `Path` or `datasets.Dataset`): a `.json` / `.jsonl` file, a `save_to_disk` folder, a local
            dataset `load_dataset` reads, or a `Dataset`.
        image_root (`str` or `Path`, *optional*): folder that relative image paths are resolved against.
        source_name (`str`, *optional*): the `source` of records that carry no `dataset` field; defaults to the
            file or folder name.
        columns (`ColumnNames`, *optional*): column names of a plain source.
        split (`str`, *optional*, defaults to `"train"`): split read by `load_dataset`.
        limit (`int`, *optional*): keep only the first `limit` records.
        strict (`bool`, *optional*, defaults to `False`): raise at the first record in no accepted format instead
            of returning it with its `error` set.

    Raises:
        `RecordFormatError`: a `.json` file that is not a JSON list; with `strict`, the first malformed record.
    """
    columns = columns or ColumnNames()
    raw, default_name = _raw_records(source, split)
    name = source_name or default_name
    records = []
    for index, (item, location) in enumerate(raw):
        if limit is not None and index >= limit:
            break
        try:
            if isinstance(item, RecordFormatError):
                raise RecordFormatError(f"record {index} at {item}")
            records.append(normalise_record(index, item, name, image_root, columns, location))
        except RecordFormatError as error:
            if strict:
                raise
            records.append(malformed_record(index, item, name, error, columns))
    malformed = sum(record.error is not None for record in records)
    logger.info("Read %d records from %s (%d in no accepted format)", len(records), name, malformed)
    return unique_keys(records)


def load_image(record: SourceRecord) -> Image.Image:
    """The record's image as 8-bit RGB (`lavit_hf.images.to_rgb`).

    Raises:
        `FileNotFoundError`: the record has no image, or its file is missing.
        `OSError`, `ValueError` or `PIL.Image.DecompressionBombError` (`IMAGE_ERRORS`): the image cannot be decoded.
    """
    if record.image_path is None and record.image is None:
        raise FileNotFoundError("the record has no image")
    if record.image_path is not None:
        with Image.open(record.image_path) as image:
            image.load()
            rgb = to_rgb(image)
            return rgb.copy() if rgb is image else rgb
    if isinstance(record.image, Image.Image):
        return to_rgb(record.image)
    import datasets

    return to_rgb(datasets.Image().decode_example(record.image))


def image_bytes(record: SourceRecord) -> dict[str, Any]:
    """The record's image as stored in the dataset's `Image` column: the original file's bytes and name."""
    if record.image_path is not None:
        return {"bytes": Path(record.image_path).read_bytes(), "path": Path(record.image_path).name}
    import datasets

    return datasets.Image().encode_example(record.image)


__all__ = [
    "BOX_REQUEST",
    "IMAGE_ERRORS",
    "ColumnNames",
    "RecordFormatError",
    "SourceRecord",
    "box_in_frame",
    "image_bytes",
    "load_image",
    "malformed_record",
    "normalise_record",
    "parse_box",
    "read_source",
    "unique_keys",
]
