"""The one schema of a LaViT dataset: the columns teacher extraction writes and the collator and demo read."""

import datasets


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
VTOP = "vtop"
VTOP_TOKENS = "vtop_tokens"
TRAJECTORY_ATTENTION = "trajectory_attention"
TRAJECTORY_GRADIENT = "trajectory_gradient"
TRAJECTORY_STEPS_ATTENTION = "trajectory_steps_attention"
TRAJECTORY_STEPS_GRADIENT = "trajectory_steps_gradient"
TRAJECTORY_LAYERS = "trajectory_layers"
TRAJECTORY_SPAN = "trajectory_span"

TRAJECTORY_COLUMNS = {"attention": TRAJECTORY_ATTENTION, "gradient": TRAJECTORY_GRADIENT}


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
            Which trajectories are stored: `"attention"`, `"gradient"` or both.

    Columns:
        - `id` (string): deterministic key of the sample (source + question id), unique in the dataset.
        - `question_id`, `source` (string): the record's own id and where it came from.
        - `image` (Image), `image_size` ([width, height] int32, the original image).
        - `question`, `answer` (string): the question and the reference answer.
        - `bbox` (list of float32): the Visual-CoT box `[x1, y1, x2, y2]` normalised to the image padded to a
          square, or empty.
        - `teacher_response` (string), `teacher_response_steps` (list of string): the teacher's own answer, and its
          steps when step splitting was asked for (else one step, the whole response).
        - `teacher_grid` ([h, w] int32): the teacher's merged image-token grid; trajectories and `vtop_tokens` are
          laid out row-major on it (`h * w` entries).
        - `vtop` (list of float32, D entries): mean over the image tokens of the teacher's last decoder layer output
          (before the final norm).
        - `vtop_tokens` (Array2D (None, D) float16, optional): the same features per image token.
        - `trajectory_attention` / `trajectory_gradient` (list of float32, `h * w` entries, summing to 1).
        - `trajectory_steps_attention` / `trajectory_steps_gradient` (list of list of float32): one distribution
          per response step.
        - `trajectory_layers` (list of int32): the teacher layers the attention trajectory averages over.
        - `trajectory_span` ([start, end) int32): the response tokens' positions in the teacher's sequence.
    """
    unknown = set(trajectory_methods) - set(TRAJECTORY_COLUMNS)
    if unknown or not trajectory_methods:
        raise ValueError(f"trajectory_methods {trajectory_methods}: expected a non-empty subset of {set(TRAJECTORY_COLUMNS)}.")
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
        TEACHER_GRID: pair,
        VTOP: datasets.List(datasets.Value("float32"), length=teacher_hidden_size),
        TRAJECTORY_LAYERS: datasets.List(datasets.Value("int32")),
        TRAJECTORY_SPAN: pair,
    }
    if token_features:
        columns[VTOP_TOKENS] = datasets.Array2D((None, teacher_hidden_size), "float16")
    if "attention" in trajectory_methods:
        columns[TRAJECTORY_ATTENTION] = floats
        columns[TRAJECTORY_STEPS_ATTENTION] = datasets.List(floats)
    if "gradient" in trajectory_methods:
        columns[TRAJECTORY_GRADIENT] = floats
        columns[TRAJECTORY_STEPS_GRADIENT] = datasets.List(floats)
    return datasets.Features(columns)


def teacher_hidden_size_of(features: datasets.Features) -> int:
    """D, read back from a LaViT dataset's features."""
    if VTOP not in features:
        raise ValueError(f"Not a LaViT dataset: no {VTOP!r} column among {list(features)}.")
    return features[VTOP].length


__all__ = [name for name in dir() if name.isupper()] + ["lavit_features", "teacher_hidden_size_of"]
