"""The one schema of a LaViT dataset: the columns teacher extraction writes and the collator and demo read.

Each trajectory method (the teacher side registers them by name, `datasets_scripts.teacher.TRAJECTORY_METHODS`)
stores two columns named after it, `trajectory_column(name)` and `trajectory_steps_column(name)`, so a dataset tells
which methods it holds (`trajectory_methods`) without any list of methods here.
"""

import logging
import re
from collections.abc import Iterable

import datasets


logger = logging.getLogger(__name__)

# Column names, in one place.
ID = "id"
QUESTION_ID = "question_id"
SOURCE = "source"
IMAGE = "image"
IMAGE_SIZE = "image_size"
QUESTION = "question"
ANSWER = "answer"
BBOX = "bbox"
TEACHER_RESPONSE = "teacher_response"
TEACHER_RESPONSE_STEPS = "teacher_response_steps"
TEACHER_GRID = "teacher_grid"
TEACHER_FAMILY = "teacher_family"
VTOP = "vtop"
VTOP_TOKENS = "vtop_tokens"
TRAJECTORY_LAYERS = "trajectory_layers"
TRAJECTORY_SPAN = "trajectory_span"

_TRAJECTORY_PREFIX = "trajectory_"
_STEPS_PREFIX = "trajectory_steps_"
_METHOD_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _checked_method(name: str) -> str:
    if not isinstance(name, str) or not _METHOD_NAME.fullmatch(name) or name in ("layers", "span"):
        raise ValueError(
            f"Trajectory method name {name!r}: expected lowercase letters, digits and underscores, starting with a "
            "letter (and not 'layers' or 'span', which name other columns)."
        )
    return name


def trajectory_column(method: str) -> str:
    """The column holding method `method`'s trajectory (one distribution over the teacher's grid).

    Example:

    ```python
    >>> trajectory_column("attention"), trajectory_steps_column("attention")
    ('trajectory_attention', 'trajectory_steps_attention')

    ```
    """
    return _TRAJECTORY_PREFIX + _checked_method(method)


def trajectory_steps_column(method: str) -> str:
    """The column holding method `method`'s trajectories per response step."""
    return _STEPS_PREFIX + _checked_method(method)


def trajectory_methods(columns: Iterable[str]) -> list[str]:
    """The trajectory methods a dataset holds, read from its column names (or a row's keys), in column order.

    Example:

    ```python
    >>> trajectory_methods(["id", "trajectory_attention", "trajectory_steps_attention", "trajectory_layers"])
    ['attention']

    ```
    """
    columns = list(columns)
    return [
        column.removeprefix(_TRAJECTORY_PREFIX)
        for column in columns
        if column.startswith(_TRAJECTORY_PREFIX)
        and not column.startswith(_STEPS_PREFIX)
        and column not in (TRAJECTORY_LAYERS, TRAJECTORY_SPAN)
    ]


# The two methods extraction ships with, by column (the card describes them).
TRAJECTORY_ATTENTION = trajectory_column("attention")
TRAJECTORY_GRADIENT = trajectory_column("gradient")
TRAJECTORY_STEPS_ATTENTION = trajectory_steps_column("attention")
TRAJECTORY_STEPS_GRADIENT = trajectory_steps_column("gradient")


def lavit_features(
    teacher_hidden_size: int, token_features: bool = False, trajectory_methods: tuple[str, ...] = ("attention",)
) -> datasets.Features:
    """The `datasets.Features` of a LaViT dataset.

    Args:
        teacher_hidden_size (`int`):
            D, the teacher's hidden width (documented in the card; the pooled `vtop` has D entries).
        token_features (`bool`, *optional*, defaults to `False`):
            Whether the token-wise `vtop_tokens` matrix `[n_image_tokens, D]` (float16) is stored.
        trajectory_methods (`tuple[str, ...]`, *optional*, defaults to `("attention",)`):
            The names of the trajectory methods stored (`"attention"`, `"gradient"`, or any method the teacher side
            registers), each in the columns `trajectory_column(name)` and `trajectory_steps_column(name)`.

    Columns:
        - `id` (string): deterministic key of the sample (source + question id), unique in the dataset.
        - `question_id`, `source` (string): the record's own id and where it came from.
        - `image` (Image), `image_size` ([width, height] int32, the original image).
        - `question`, `answer` (string): the question and the reference answer.
        - `bbox` (list of float32): the Visual-CoT box `[x1, y1, x2, y2]` normalised to the image padded to a
          square, or empty.
        - `teacher_response` (string), `teacher_response_steps` (list of string): the teacher's own answer, and its
          steps when step splitting was asked for (else one step, the whole response).
        - `teacher_family` (string): the teacher's model family, its `model_type` (`qwen2_5_vl`, `qwen3_vl`,
          `gemma3`, ...).
        - `teacher_grid` ([h, w] int32): the teacher's image-token grid (one 2-D grid per image); trajectories and
          `vtop_tokens` are laid out row-major on it (`h * w` entries).
        - `vtop` (list of float32, D entries): mean over the image tokens of the teacher's last decoder layer output
          (before the final norm).
        - `vtop_tokens` (Array2D (None, D) float16, optional): the same features per image token.
        - `trajectory_<method>` (list of float32, `h * w` entries, summing to 1), one column per method (for example
          `trajectory_attention`, `trajectory_gradient`).
        - `trajectory_steps_<method>` (list of list of float32): one distribution per response step.
        - `trajectory_layers` (list of int32): the teacher layers the attention trajectory averages over.
        - `trajectory_span` ([start, end) int32): the response tokens' positions in the teacher's sequence.
    """
    if not trajectory_methods or len(set(trajectory_methods)) != len(trajectory_methods):
        raise ValueError(f"trajectory_methods {trajectory_methods}: expected one or more distinct method names.")
    floats = datasets.List(datasets.Value("float32"))
    pair = datasets.List(datasets.Value("int32"), length=2)
    columns = {
        ID: datasets.Value("string"),
        QUESTION_ID: datasets.Value("string"),
        SOURCE: datasets.Value("string"),
        IMAGE: datasets.Image(),
        IMAGE_SIZE: pair,
        QUESTION: datasets.Value("string"),
        ANSWER: datasets.Value("string"),
        BBOX: floats,
        TEACHER_RESPONSE: datasets.Value("string"),
        TEACHER_RESPONSE_STEPS: datasets.List(datasets.Value("string")),
        TEACHER_FAMILY: datasets.Value("string"),
        TEACHER_GRID: pair,
        VTOP: datasets.List(datasets.Value("float32"), length=teacher_hidden_size),
        TRAJECTORY_LAYERS: datasets.List(datasets.Value("int32")),
        TRAJECTORY_SPAN: pair,
    }
    if token_features:
        columns[VTOP_TOKENS] = datasets.Array2D((None, teacher_hidden_size), "float16")
    for method in trajectory_methods:
        columns[trajectory_column(method)] = floats
        columns[trajectory_steps_column(method)] = datasets.List(floats)
    return datasets.Features(columns)


def teacher_hidden_size_of(dataset: datasets.Dataset, name: str = "the dataset") -> int:
    """D, the teacher's feature width of a LaViT dataset: from its features when they fix it (`vtop` of a fixed
    length, or `vtop_tokens`), else from its first row (a `vtop` column declared as a plain list; the collator then
    checks every row against it).

    Args:
        dataset (`datasets.Dataset`): a LaViT dataset.
        name (`str`, *optional*, defaults to `"the dataset"`): names the dataset in errors and logs.

    Raises:
        `ValueError`: naming the dataset (and the row read), when it has no V_top column, is empty where the width
            must be read from a row, or gives a width that is not positive.

    Example:

    ```python
    >>> from lavit_hf.testing_utils import synthetic_lavit_dataset
    >>> teacher_hidden_size_of(synthetic_lavit_dataset(1, teacher_hidden_size=8))
    8

    ```
    """
    features = dataset.features
    if VTOP in features:
        width = getattr(features[VTOP], "length", None)
        where = f"column {VTOP!r} of {name}"
        if width is None or width < 0:
            if len(dataset) == 0:
                raise ValueError(f"{name}: the dataset is empty.")
            first = dataset[0]
            width = len(first[VTOP] if first[VTOP] is not None else [])
            logger.info(
                "%s: column %r does not fix its width; D=%d read from its first row (%r).",
                name, VTOP, width, first.get(ID),
            )  # fmt: skip
            where = f"{where} (first row {first.get(ID)!r})"
    elif VTOP_TOKENS in features:
        width = features[VTOP_TOKENS].shape[1]
        where = f"column {VTOP_TOKENS!r} of {name}"
    else:
        raise ValueError(f"{name}: not a LaViT dataset: no {VTOP!r} column among {list(features)}.")
    if width is None or width < 1:
        raise ValueError(f"{where}: the teacher's feature width must be positive, got {width}.")
    return int(width)


__all__ = [name for name in dir() if name.isupper() and not name.startswith("_")] + [
    "lavit_features",
    "teacher_hidden_size_of",
    "trajectory_column",
    "trajectory_methods",
    "trajectory_steps_column",
]
