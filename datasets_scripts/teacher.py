"""Teacher-side extraction (docs/method.md section 1): the teacher's response, V_top and the trajectories, for a
teacher of any supported family.

One forward pass over image + question + response gives, per sample (several samples share one forward, right-padded,
with outputs equal to one sample per forward up to float rounding: `TeacherExtractor.extract_batch`):

- **V_top**: a forward hook on the last decoder layer keeps its output (before the final norm) at the image-token
  positions.
- **Attention trajectory**: during extraction the teacher's text attention runs through
  `lavit_hf.attention.observed_sdpa_attention` (`observing_attention`, registered with transformers'
  `AttentionInterface`). It computes the layer's output with sdpa, as the teacher otherwise would, and, on the
  selected layers, `AttentionRowCapture` scores the response rows against every key with
  the *same* query and key tensors the attention receives (after the family's q/k norms and RoPE, whatever they are),
  the layer's own scaling and the layer's own mask (causal, padding, sliding window, bidirectional image blocks). The
  rows' float32 softmax is exactly what `eager` attention with `output_attentions=True` gives for those rows, and the
  teacher never materialises an `[S, S]` attention matrix.
- **Gradient trajectory** (when asked): the same forward runs with gradients enabled with respect to the image
  embeddings (the family's image features as its language model receives them: Qwen's merger output, Gemma 3's
  projector output; Qwen3-VL's deepstack features, added at early layers, are held fixed), and the per-token
  gradients of the response tokens' NLL come from batched vector-Jacobian products over one retained graph
  (`is_grads_batched=True`), never one forward per token; in a batch, one cotangent carries a token of every sample.

Trajectory methods are a registry (`TRAJECTORY_METHODS`, name -> `TrajectoryMethod`); the dataset columns of a method
are named after it (`lavit_hf.schema.trajectory_column`). Distribution rules (documented in the dataset card):

- attention: `A[r, i]` = mean over heads and layers of the attention weight from response row `r` to image token `i`;
  the trajectory is `mean_r A[r, :]` renormalised to sum to 1 over the image tokens.
- gradient: `g[t, i]` = mean over the hidden dimension of `|d NLL_t / d E[i]|`. Each token's magnitudes are
  normalised first: with no temperature, `p_t = g_t / sum_i g_t[i]`; with a temperature `T`,
  `p_t = softmax((g_t / max_i g_t[i]) / T)` (so `T` acts on values in [0, 1], not on raw magnitudes as in the
  reference code). The trajectory is `mean_t p_t`, renormalised.

Teacher families are a registry too (`TEACHER_FAMILIES`, model_type -> `TeacherFamily`): each says how its image
tokens form one known 2-D grid per image. A family whose grid cannot be known (tiled or any-resolution layouts) is
refused by name, with the reason (`UNKNOWN_GRID_FAMILIES`).
"""

import concurrent.futures
import contextlib
import inspect
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence
from transformers import CompileConfig, PretrainedConfig

from lavit_hf import schema
from lavit_hf.attention import attention_row_weights, observing_attention
from lavit_hf.compilation import compile_repeated_blocks
from lavit_hf.layout import merged_grids, render_prompt


logger = logging.getLogger(__name__)

STEP_SPLITS = ("none", "newline", "sentence")
GENERATION_CACHES = ("dynamic", "static", "compiled")
# docs/method.md section 1: the attention method averages the last 8 language-model layers.
DEFAULT_ATTENTION_LAYERS = 8


class TeacherError(RuntimeError):
    """A sample the teacher could not process (empty response, tokenisation mismatch, degenerate trajectory)."""


# Teacher families ------------------------------------------------------------------------------------------------


def qwen_image_grids(config: PretrainedConfig, inputs: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    """Qwen-VL families: each image's merged grid from `image_grid_thw` (dynamic resolution)."""
    return merged_grids(inputs["image_grid_thw"], config.vision_config.spatial_merge_size)


def fixed_square_grids(config: PretrainedConfig, inputs: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    """Gemma 3: every image is resized to one size and pooled to `mm_tokens_per_image` tokens on a square grid."""
    side = math.isqrt(config.mm_tokens_per_image)
    if side * side != config.mm_tokens_per_image:
        raise ValueError(f"mm_tokens_per_image={config.mm_tokens_per_image} is not a square grid.")
    return [(side, side)] * inputs["pixel_values"].shape[0]


def refuse_pan_and_scan(processor) -> None:
    if getattr(processor.image_processor, "do_pan_and_scan", False):
        raise ValueError(
            "The Gemma 3 processor has do_pan_and_scan on: it adds crops of the image, each with its own grid of "
            "tokens, so a trajectory has no single grid. Extract with do_pan_and_scan=False."
        )


@dataclass(frozen=True)
class TeacherFamily:
    """How one teacher family lays out each image's tokens: one known 2-D grid per image, row-major in the sequence.

    Attributes:
        name (`str`): the family's `model_type`.
        image_grids (`Callable`): `(config, processor outputs) -> [(h, w), ...]`, each image's token grid.
        dynamic_resolution (`bool`): the processor's pixel limits set the grid (`min_pixels`/`max_pixels` apply);
            otherwise every image is resized to one fixed size.
        packed_vision (`bool`): the tower runs packed segments that `lavit_hf.attention` can batch into one sdpa call.
        check_processor (`Callable`, *optional*): refuses processor settings that break the one-grid layout.
    """

    name: str
    image_grids: Callable[[PretrainedConfig, dict[str, torch.Tensor]], list[tuple[int, int]]]
    dynamic_resolution: bool
    packed_vision: bool
    check_processor: Callable[[Any], None] | None = None


TEACHER_FAMILIES: dict[str, TeacherFamily] = {
    family.name: family
    for family in (
        TeacherFamily("qwen2_vl", qwen_image_grids, dynamic_resolution=True, packed_vision=True),
        TeacherFamily("qwen2_5_vl", qwen_image_grids, dynamic_resolution=True, packed_vision=True),
        TeacherFamily("qwen3_vl", qwen_image_grids, dynamic_resolution=True, packed_vision=True),
        TeacherFamily("gemma3", fixed_square_grids, False, False, refuse_pan_and_scan),
    )
}
# Families whose image tokens form no single known grid, and why (their trajectory has no 2-D layout to resample).
UNKNOWN_GRID_FAMILIES = {
    "llava_next": "any-resolution tiling (anyres): a base view plus a varying number of tiles, rows ended by newline "
    "tokens",
    "llava_next_video": "any-resolution tiling (anyres): a base view plus a varying number of tiles",
    "llava_onevision": "any-resolution tiling (anyres): a base view plus a varying number of tiles",
    "internvl": "dynamic tiling: a varying number of 448x448 tiles plus a thumbnail per image",
    "idefics2": "a perceiver resampler pools each image into latents that have no spatial grid",
    "idefics3": "image splitting: a varying number of tiles with row and column tokens",
    "smolvlm": "image splitting: a varying number of tiles with row and column tokens",
    "mllama": "tiled images read through cross-attention, with no image tokens in the sequence",
}


def teacher_family(model_type: str) -> TeacherFamily:
    """The teacher family of `model_type`, refusing by name (with the reason) a family whose grid cannot be known and
    naming the supported ones otherwise."""
    if model_type in TEACHER_FAMILIES:
        return TEACHER_FAMILIES[model_type]
    supported = ", ".join(TEACHER_FAMILIES)
    if model_type in UNKNOWN_GRID_FAMILIES:
        raise ValueError(
            f"A {model_type!r} teacher cannot be used: its images have no single known token grid "
            f"({UNKNOWN_GRID_FAMILIES[model_type]}). Supported teacher families: {supported}."
        )
    raise ValueError(f"No teacher support for model_type {model_type!r}; supported teacher families: {supported}.")


# Settings and outputs --------------------------------------------------------------------------------------------


@dataclass
class GenerationSettings:
    """How the teacher writes its response (docs/method.md section 1: greedy, repetition penalty 1.05, 1024 tokens).

    Args:
        max_new_tokens (`int`, *optional*, defaults to 1024): longest response.
        do_sample (`bool`, *optional*, defaults to `False`): greedy when `False`.
        repetition_penalty (`float`, *optional*, defaults to 1.05): as in the reference code.
        temperature (`float`, *optional*, defaults to 1.0): only used when sampling.
        top_p (`float`, *optional*, defaults to 1.0): only used when sampling.
        batch_size (`int`, *optional*, defaults to 8): prompts generated together (left padding).
        cache (`str`, *optional*, defaults to `"dynamic"`): the key-value cache of `generate`, one of
            `GENERATION_CACHES`: `dynamic` (transformers' `DynamicCache`, grown token by token), `static` (a
            preallocated `StaticCache`, kept at the longest length seen so far so that later batches reuse it) or
            `compiled` (the static cache with each decoding step compiled by `torch.compile`, transformers'
            `CompileConfig`: CUDA graphs on a GPU, on any device). All three give the same greedy tokens up to the
            kernels' rounding (equal on the tiny teachers in float32).
    """

    max_new_tokens: int = 1024
    do_sample: bool = False
    repetition_penalty: float = 1.05
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 8
    cache: str = "dynamic"

    def __post_init__(self):
        if self.cache not in GENERATION_CACHES:
            raise ValueError(f"cache={self.cache!r}: expected one of {GENERATION_CACHES}.")

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        kwargs["repetition_penalty"] = self.repetition_penalty
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        else:
            # Greedy: unset the sampling knobs a checkpoint's generation_config may carry, so none is silently used.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.cache == "static":
            # On a GPU, `generate` would compile the decoding step of a static cache by itself: `compiled` asks for it.
            kwargs.update(cache_implementation="static", disable_compile=True)
        elif self.cache == "compiled":
            compile_config = CompileConfig()
            # Without this flag `generate` compiles on accelerators only, and runs eagerly elsewhere without a word.
            compile_config._compile_all_devices = True
            kwargs.update(cache_implementation="static", compile_config=compile_config)
        return kwargs


@dataclass
class ExtractionSettings:
    """What is extracted from each sample.

    Args:
        methods (`tuple[str, ...]`, *optional*, defaults to `("attention",)`): trajectory methods to compute, by their
            names in `TRAJECTORY_METHODS`.
        attention_layers (`list[int]`, *optional*): teacher layers averaged by the attention method; negative
            indices count from the end. Defaults to the last 8 (docs/method.md section 1), or all of a shallower
            teacher.
        gradient_temperature (`float`, *optional*): temperature of the gradient method's softmax; `None` divides the
            magnitudes by their sum instead (see the module docstring).
        gradient_batch_size (`int`, *optional*, defaults to 32): per-token gradients computed per batched backward.
        row_chunk (`int`, *optional*, defaults to 256): response rows scored at once by the attention capture.
        token_features (`bool`, *optional*, defaults to `False`): also keep the token-wise V_top matrix.
        split_steps (`str`, *optional*, defaults to `"none"`): `none`, `newline` or `sentence`.
    """

    methods: tuple[str, ...] = ("attention",)
    attention_layers: list[int] | None = None
    gradient_temperature: float | None = None
    gradient_batch_size: int = 32
    row_chunk: int = 256
    token_features: bool = False
    split_steps: str = "none"

    def __post_init__(self):
        self.methods = tuple(self.methods)
        unknown = [name for name in self.methods if name not in TRAJECTORY_METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods={self.methods}: expected one or more of {list(TRAJECTORY_METHODS)}.")
        if self.split_steps not in STEP_SPLITS:
            raise ValueError(f"split_steps={self.split_steps!r}: expected one of {STEP_SPLITS}.")
        if self.gradient_temperature is not None and self.gradient_temperature <= 0:
            raise ValueError(f"gradient_temperature={self.gradient_temperature}: must be > 0 (or None).")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TeacherOutput:
    """Everything extracted from one sample; tensors are on the CPU."""

    response: str
    steps: list[str]
    span: tuple[int, int]
    grid: tuple[int, int]
    layers: list[int]
    vtop_tokens: torch.Tensor
    family: str
    trajectories: dict[str, torch.Tensor] = field(default_factory=dict)
    step_trajectories: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class EncodedSample:
    """Where one sample's tokens lie in its row of an encoded batch.

    Attributes:
        span (`tuple[int, int]`): the response tokens' positions, `[start, end)`.
        offsets (`list[tuple[int, int]]`): each response token's character span in the response.
        image_positions (`torch.LongTensor`): the image tokens' positions, in grid order.
        grid (`tuple[int, int]`): the image's token grid.
        length (`int`): the row's real tokens; the rest of the row is right padding.
    """

    span: tuple[int, int]
    offsets: list[tuple[int, int]]
    image_positions: torch.Tensor
    grid: tuple[int, int]
    length: int


@dataclass
class EncodedBatch:
    """Processor output for several prompt + response sequences, right-padded, and each sample's place in it.

    Right padding keeps every sample's tokens at the positions they have alone: the padding comes after the response,
    so no real token attends to it, and the model derives each row's positions (Qwen's 3-D RoPE indices among them)
    from the attention mask.
    """

    inputs: dict[str, torch.Tensor]
    samples: list[EncodedSample]


def split_steps(response: str, offsets: list[tuple[int, int]], rule: str) -> list[tuple[int, int, str]]:
    """Split a response into steps, as consecutive token ranges that cover every response token.

    `newline` cuts after every run of line breaks; `sentence` also cuts after `.`, `!` or `?` followed by
    whitespace. A token belongs to the step holding its first character; a step is never empty.

    Args:
        response (`str`): the response text.
        offsets (`list[tuple[int, int]]`): each response token's character span in `response`.
        rule (`str`): `none`, `newline` or `sentence`.

    Returns:
        `list[tuple[int, int, str]]`: `(first_token, end_token, step_text)` per step, token indices relative to the
        response.
    """
    pattern = {"none": None, "newline": r"\n+", "sentence": r"(?<=[.!?])\s+|\n+"}[rule]
    cuts = [] if pattern is None else [m.start() for m in re.finditer(pattern, response)]
    starts = [0]
    for cut in cuts:
        first = next((t for t, (s, _) in enumerate(offsets) if s >= cut), len(offsets))
        if starts[-1] < first < len(offsets):
            starts.append(first)
    bounds = starts + [len(offsets)]
    steps = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        steps.append((a, b, response[offsets[a][0] : offsets[b - 1][1]].strip()))
    return steps


# The attention capture -------------------------------------------------------------------------------------------

class AttentionRowCapture:
    """The response rows' attention over the image tokens, read from the attention function's own inputs, for all the
    samples of a batch at once.

    For each selected attention module (a decoder layer's self-attention), `observe` receives the query and key
    tensors exactly as the attention function does (after the family's projections, q/k norms and RoPE), the layer's
    mask in sdpa's format and its scaling. It softmaxes the response rows' scores over each sample's real keys in
    float32 (the row's right padding left out, as the mask leaves it out), averages the weights over the heads and
    adds those on the image tokens to a running sum over the layers. Every sample is scored in the same kernels (rows
    and image positions padded to the longest sample's; `mean` drops the padding), with no host sync. Memory:
    `row_chunk x S x heads` floats per chunk, never `S x S`.

    Args:
        modules (`dict[torch.nn.Module, int]`): the attention modules to read, mapped to their layer index.
        rows (`list[torch.LongTensor]`): per sample, the response positions in its row.
        image_positions (`list[torch.LongTensor]`): per sample, the image-token positions in its row.
        row_chunk (`int`): rows scored at once, over all the samples.
        lengths (`list[int]`, *optional*): per sample, the real tokens at the start of its row (right padding
            follows). Defaults to the whole row.
    """

    def __init__(
        self,
        modules: dict[torch.nn.Module, int],
        rows: list[torch.Tensor],
        image_positions: list[torch.Tensor],
        row_chunk: int,
        lengths: list[int] | None = None,
    ):
        if len(rows) != len(image_positions) or (lengths is not None and len(lengths) != len(rows)):
            raise ValueError("rows, image_positions and lengths must hold one entry per sample.")
        if not rows:
            raise ValueError("the attention capture needs at least one sample.")
        self.modules = modules
        self.row_counts = [len(sample_rows) for sample_rows in rows]
        self.image_counts = [len(positions) for positions in image_positions]
        # Padded with position 0, a real token of every row (the padding of a batch is on the right).
        self.rows = pad_sequence([r.long().cpu() for r in rows], batch_first=True)
        self.image_positions = pad_sequence([p.long().cpu() for p in image_positions], batch_first=True)
        self.lengths = None if lengths is None else torch.tensor(lengths)
        self.rows_per_chunk = max(1, row_chunk // len(rows))
        self.observed: list[int] = []
        self.total: torch.Tensor | None = None

    def observe(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
        is_causal: bool,
    ) -> None:
        """Add the head-averaged weights of `module`'s layer (if selected) to the running sum."""
        layer = self.modules.get(module)
        if layer is None:
            return
        batch, heads, length, head_dim = query.shape
        if key.shape[2] != length:
            raise TeacherError("the attention capture reads a whole sequence without a cache")
        if batch != len(self.row_counts):
            raise TeacherError(f"the attention capture expects {len(self.row_counts)} sample(s), not {batch}")
        if layer in self.observed:
            raise TeacherError(f"the attention capture saw layer {layer} twice in one forward")
        self.observed.append(layer)
        device = query.device
        if self.rows.device != device:
            self.rows, self.image_positions = self.rows.to(device), self.image_positions.to(device)
            self.lengths = None if self.lengths is None else self.lengths.to(device)
        with torch.no_grad():
            real_keys = torch.arange(length, device=device)[None, :]
            real_keys = real_keys < (length if self.lengths is None else self.lengths[:, None])
            if self.total is None:
                self.total = torch.zeros(self.rows.shape + self.image_positions.shape[1:], device=device)
            for first in range(0, self.rows.shape[1], self.rows_per_chunk):
                rows = self.rows[:, first : first + self.rows_per_chunk]
                weights = attention_row_weights(
                    query.detach(), key.detach(), attention_mask, scaling, is_causal, rows, real_keys
                )
                index = self.image_positions[:, None, :].expand(-1, rows.shape[1], -1)
                self.total[:, first : first + rows.shape[1]] += weights.gather(2, index)

    def mean(self) -> list[torch.Tensor]:
        """Per sample, `[rows, n_image]` on the CPU: the mean over the selected layers of the head-averaged weights
        (one copy from the device for the whole batch)."""
        missing = sorted(set(self.modules.values()) - set(self.observed))
        if missing:
            raise TeacherError(f"the attention capture saw no attention call in layers {missing}")
        average = (self.total / len(self.observed)).cpu()
        return [
            average[sample, :rows, :images]
            for sample, (rows, images) in enumerate(zip(self.row_counts, self.image_counts, strict=True))
        ]


# Trajectory methods ----------------------------------------------------------------------------------------------


@dataclass
class TeacherForward:
    """What the one forward pass of a sample recorded for the trajectory methods.

    Attributes:
        attention (`torch.Tensor` of shape `(R, N)`, *optional*): the response rows' head- and layer-averaged attention
            on the image tokens (when a method captures attention).
        gradient (`torch.Tensor` of shape `(R, N)`, *optional*): per response token, `|d NLL_t / d E|` averaged over
            the hidden dimension (when a method needs gradients).
    """

    attention: torch.Tensor | None = None
    gradient: torch.Tensor | None = None


@dataclass(frozen=True)
class TrajectoryMethod:
    """One way of turning the teacher's forward pass into per-response-token weights over the image tokens.

    Attributes:
        name (`str`): the registry key; the dataset columns are `schema.trajectory_column(name)` and
            `schema.trajectory_steps_column(name)`.
        rule (`str`): the distribution rule, in one sentence (see the module docstring).
        captures_attention (`bool`): the forward runs with the attention capture on the selected layers.
        needs_gradient (`bool`): the forward runs with gradients with respect to the image embeddings.
        per_token (`Callable`): `(TeacherForward, ExtractionSettings) -> (R, N)` non-negative weights per response
            token; the trajectory (or a step's) is their mean over the tokens, renormalised.
    """

    name: str
    rule: str
    captures_attention: bool
    needs_gradient: bool
    per_token: Callable[[TeacherForward, ExtractionSettings], torch.Tensor]


TRAJECTORY_METHODS: dict[str, TrajectoryMethod] = {}


def register_trajectory_method(method: TrajectoryMethod) -> TrajectoryMethod:
    """Add `method` to `TRAJECTORY_METHODS` (its name must make valid column names)."""
    schema.trajectory_column(method.name)
    TRAJECTORY_METHODS[method.name] = method
    return method


def gradient_distributions(magnitudes: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """Turn per-token magnitudes `[R, N]` into per-token distributions (rule in the module docstring)."""
    if temperature is None:
        return normalise(magnitudes)
    peak = magnitudes.amax(-1, keepdim=True)
    if bool((peak <= 0).any()):
        raise TeacherError("a response token has zero gradient on every image token")
    return torch.softmax(magnitudes / peak / temperature, dim=-1)


register_trajectory_method(
    TrajectoryMethod(
        name="attention",
        rule="mean over heads, selected layers and response rows of the attention weight on each image token",
        captures_attention=True,
        needs_gradient=False,
        per_token=lambda forward, settings: forward.attention,
    )
)
register_trajectory_method(
    TrajectoryMethod(
        name="gradient",
        rule="mean over response tokens of each token's normalised |d NLL / d image embedding|",
        captures_attention=False,
        needs_gradient=True,
        per_token=lambda forward, settings: gradient_distributions(forward.gradient, settings.gradient_temperature),
    )
)


# The extractor ---------------------------------------------------------------------------------------------------


class TeacherExtractor:
    """Runs a teacher of any supported family (`TEACHER_FAMILIES`) over samples: batched generation, then one forward
    per batch of samples (`extract_batch`; `extract` for one; `extract_batches` for a sequence of batches, each encoded
    while the teacher runs the one before) for V_top and the trajectories.

    Args:
        model (`PreTrainedModel`): the teacher, an image-text-to-text model of a supported family, any attention
            implementation (its text attention runs as sdpa, with the capture, during extraction).
        processor (`ProcessorMixin`): its processor; for dynamic-resolution families its pixel limits set the
            teacher's resolution.
        settings (`ExtractionSettings`): what to extract.
        generation (`GenerationSettings`, *optional*): how the teacher answers.
        compile_blocks (`bool`, *optional*, defaults to `False`): compile each decoder layer and vision block of the
            teacher in place for the extraction forward (`lavit_hf.compilation.compile_repeated_blocks`): the same
            values up to the kernels' rounding, faster on a GPU. The attention capture and the V_top hook run
            eagerly between the compiled graphs. The gradient method's language-model forward and backward run the
            blocks eagerly (its batched backward cannot run compiled graphs), as does generation with a `dynamic` or
            `static` cache (`compiled` compiles each decoding step itself).
        compile_options (`dict`, *optional*): keyword arguments of `torch.compile` for `compile_blocks` (`backend`,
            `mode`, ...).

    Example:

    ```python
    >>> from PIL import Image
    >>> from lavit_hf import build_tiny_base
    >>> from datasets_scripts.teacher import ExtractionSettings, TeacherExtractor
    >>> model, processor = build_tiny_base("qwen2_5_vl", seed=1)
    >>> extractor = TeacherExtractor(model, processor, ExtractionSettings(attention_layers=[-1]))
    >>> out = extractor.extract(Image.new("RGB", (112, 56)), "What is it?", "A gray field.")
    >>> out.family, out.grid, round(float(out.trajectories["attention"].sum()), 4)
    ('qwen2_5_vl', (2, 4), 1.0)

    ```
    """

    def __init__(
        self,
        model,
        processor,
        settings: ExtractionSettings,
        generation: GenerationSettings | None = None,
        compile_blocks: bool = False,
        compile_options: dict[str, Any] | None = None,
    ):
        self.family = teacher_family(model.config.model_type)
        if self.family.check_processor is not None:
            self.family.check_processor(processor)
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.settings = settings
        self.generation = generation or GenerationSettings()
        self.decoder_layers = model.model.language_model.layers
        n_layers = len(self.decoder_layers)
        requested = settings.attention_layers
        if requested is None:
            requested = list(range(-min(DEFAULT_ATTENTION_LAYERS, n_layers), 0))
        if any(not -n_layers <= layer < n_layers for layer in requested):
            raise ValueError(f"attention_layers {requested}: the teacher has {n_layers} layers.")
        self.layers = sorted({layer % n_layers for layer in requested})
        self.methods = [TRAJECTORY_METHODS[name] for name in settings.methods]
        self._tokenizer_lock = threading.Lock()  # `extract_batches` encodes in a second thread
        if compile_blocks:
            compile_repeated_blocks(model, **(compile_options or {}))
        layer_types = getattr(model.config.get_text_config(), "layer_types", None) or []
        if self.generation.cache == "compiled" and "sliding_attention" in layer_types:
            logger.warning(
                "A compiled generation cache gains nothing on a teacher with sliding-window layers (%s): "
                "transformers' static sliding-window cache changes a Python int at every step, so torch.compile "
                "recompiles each step until its recompile limit and then runs eagerly.", self.family.name
            )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return self.model.config.get_text_config().hidden_size

    # Generation ------------------------------------------------------------------------------------------------

    def generate(self, images: list[Image.Image], questions: list[str]) -> list[str]:
        """The teacher's responses to a batch of prompts (left padding), stripped of surrounding whitespace."""
        tokenizer = self.processor.tokenizer
        with self._tokenizer_lock:
            side, tokenizer.padding_side = tokenizer.padding_side, "left"
            try:
                texts = [render_prompt(self.processor, q) for q in questions]
                # One image list per prompt: some processors (Gemma 3's) read a flat list as all images of one prompt.
                per_prompt = [[image] for image in images]
                enc = self.processor(text=texts, images=per_prompt, padding=True, return_tensors="pt")
            finally:
                tokenizer.padding_side = side
        enc = enc.to(self.device)
        # A dynamic or static cache runs compiled blocks eagerly: each decoding step would otherwise recompile them
        # for its cache (`compiled` compiles the whole step instead).
        eager = self.generation.cache != "compiled"
        with torch.no_grad(), torch.compiler.set_stance("force_eager") if eager else contextlib.nullcontext():
            kwargs = self.generation.generate_kwargs()
            out = self.model.generate(**enc, **kwargs, pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1] :]
        return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]

    # Encoding --------------------------------------------------------------------------------------------------

    def encode_batch(self, images: list[Image.Image], questions: list[str], responses: list[str]) -> EncodedBatch:
        """Tokenise each prompt + response into one right-padded batch and locate each sample's response tokens from
        the tokenizer's offsets.

        Each response is tokenised alone (with offsets) and must be the exact suffix of its row's real tokens; this
        fails loudly if the chat template's last token and the response's first merge into one token.
        """
        if not len(images) == len(questions) == len(responses) > 0:
            raise ValueError(f"{len(images)} images, {len(questions)} questions and {len(responses)} responses.")
        if not all(responses):
            raise TeacherError("empty teacher response")
        tokenizer = self.processor.tokenizer
        texts = [render_prompt(self.processor, q) + r for q, r in zip(questions, responses, strict=True)]
        side, tokenizer.padding_side = tokenizer.padding_side, "right"
        try:
            # One image list per prompt: some processors (Gemma 3's) read a flat list as all images of one prompt.
            per_prompt = [[image] for image in images]
            inputs = self.processor(text=texts, images=per_prompt, padding=True, return_tensors="pt")
        finally:
            tokenizer.padding_side = side
        grids = self.family.image_grids(self.model.config, inputs)
        if len(grids) != len(images):
            raise TeacherError(f"{len(grids)} image grids for {len(images)} images")
        samples = []
        for row, (response, grid) in enumerate(zip(responses, grids, strict=True)):
            mask = inputs["attention_mask"][row]
            length = int(mask.sum())
            if not bool(mask[:length].all()):
                raise TeacherError("the processor did not pad the batch on the right")
            ids = inputs["input_ids"][row, :length]
            alone = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
            resp = alone["input_ids"]
            if not resp or ids[-len(resp) :].tolist() != resp:
                raise TeacherError("the response's tokens differ inside the full sequence (tokeniser boundary merge)")
            image_positions = (ids == self.model.config.image_token_id).nonzero().flatten()
            if grid[0] * grid[1] != len(image_positions):
                raise TeacherError(f"{len(image_positions)} image tokens for a grid of {grid}")
            span = (length - len(resp), length)
            offsets = [tuple(o) for o in alone["offset_mapping"]]
            samples.append(EncodedSample(span, offsets, image_positions, grid, length))
        return EncodedBatch(inputs, samples)

    def encode(self, image: Image.Image, question: str, response: str) -> EncodedBatch:
        """`encode_batch` of one sample (no padding)."""
        return self.encode_batch([image], [question], [response])

    # Extraction ------------------------------------------------------------------------------------------------

    def extract(self, image: Image.Image, question: str, response: str) -> TeacherOutput:
        """V_top and the trajectories of one sample from one forward pass (see the module docstring)."""
        return self.extract_batch([image], [question], [response])[0]

    def extract_batch(
        self,
        images: list[Image.Image],
        questions: list[str],
        responses: list[str],
        encoded: EncodedBatch | None = None,
    ) -> list[TeacherOutput]:
        """V_top and the trajectories of several samples from one forward pass over their right-padded batch.

        Each sample's outputs equal those of `extract` on it alone up to float rounding: the padding follows its real
        tokens (no real token attends to it), the model derives its positions from the attention mask, the V_top hook
        and the attention capture read its own positions, and its gradients come from cotangents on its own tokens.
        Raises `TeacherError` (or `ValueError`) if any sample cannot be processed; `extract` it alone to find which.

        Args:
            images, questions, responses: the samples.
            encoded (`EncodedBatch`, *optional*): `encode_batch` of the samples, when it was done already.
        """
        batch = encoded if encoded is not None else self._encode(images, questions, responses)
        samples = batch.samples
        steps = [split_steps(r, s.offsets, self.settings.split_steps) for r, s in zip(responses, samples, strict=True)]
        inputs = {k: v.to(self.device) for k, v in batch.inputs.items()}
        capture = None
        if any(method.captures_attention for method in self.methods):
            modules = {self.decoder_layers[layer].self_attn: layer for layer in self.layers}
            rows = [torch.arange(*sample.span) for sample in samples]
            positions = [sample.image_positions for sample in samples]
            lengths = [sample.length for sample in samples]
            capture = AttentionRowCapture(modules, rows, positions, self.settings.row_chunk, lengths)
        # Every sample's image tokens, gathered from the last decoder layer's output in one indexing.
        image_counts = [len(sample.image_positions) for sample in samples]
        image_rows = torch.repeat_interleave(torch.arange(len(samples)), torch.tensor(image_counts)).to(self.device)
        image_columns = torch.cat([sample.image_positions for sample in samples]).to(self.device)
        vtop: list[torch.Tensor] = []

        @torch.compiler.disable  # eager in a compiled layer: it reads this forward's output
        def keep_vtop(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            with torch.profiler.record_function("lavit_vtop"):
                vtop.append(hidden[image_rows, image_columns].detach().float())

        handle = self.decoder_layers[-1].register_forward_hook(keep_vtop)
        try:
            with observing_attention(self.model, capture) if capture is not None else contextlib.nullcontext():
                forwards = self._forward(inputs, samples, any(method.needs_gradient for method in self.methods))
        finally:
            handle.remove()
        if len(vtop) != 1:
            raise TeacherError(f"the last decoder layer ran {len(vtop)} times in one forward")
        if capture is not None:
            for forward, attention in zip(forwards, capture.mean(), strict=True):
                forward.attention = attention
        outputs = []
        for response, sample, sample_steps, forward, features in zip(
            responses, samples, steps, forwards, vtop[0].cpu().split(image_counts), strict=True
        ):
            out = TeacherOutput(
                response, [s[2] for s in sample_steps], sample.span, sample.grid, self.layers, features,
                self.family.name,
            )
            for method in self.methods:
                matrix = method.per_token(forward, self.settings)
                out.trajectories[method.name] = normalise(matrix.mean(0))
                out.step_trajectories[method.name] = torch.stack(
                    [normalise(matrix[a:b].mean(0)) for a, b, _ in sample_steps]
                )
            outputs.append(out)
        return outputs

    def extract_batches(
        self, batches: Iterable[tuple[list[Image.Image], list[str], list[str]]]
    ) -> Iterator[list[TeacherOutput] | TeacherError | ValueError]:
        """`extract_batch` of each `(images, questions, responses)` in turn, with the next batch encoded (the
        processor's work, on the CPU) in a background thread while the teacher runs the current one.

        Yields, per batch and in order, its outputs or the `TeacherError` / `ValueError` it failed with (the batches
        after it still run); any other error stops the iteration.
        """
        batches = iter(batches)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lavit-encode") as pool:

            def encode_next():
                batch = next(batches, None)
                return None if batch is None else (batch, pool.submit(self._encode, *batch))

            pending = encode_next()
            while pending is not None:
                batch, encoding = pending
                pending = encode_next()
                try:
                    outputs = self.extract_batch(*batch, encoded=encoding.result())
                except (TeacherError, ValueError) as error:
                    outputs = error
                yield outputs

    def _encode(self, images: list[Image.Image], questions: list[str], responses: list[str]) -> EncodedBatch:
        # One thread at a time: the tokenizer's padding side and padding settings are shared state.
        with self._tokenizer_lock, torch.profiler.record_function("lavit_encode"):
            return self.encode_batch(images, questions, responses)

    def _forward(
        self, inputs: dict[str, torch.Tensor], samples: list[EncodedSample], with_gradient: bool
    ) -> list[TeacherForward]:
        """The one forward pass; with `with_gradient`, also each sample's per-token gradient magnitudes `[R, N]` (on
        the CPU)."""
        if not with_gradient:
            with torch.no_grad():
                # The base model only: no LM head over the whole sequence (V_top and attention need no logits).
                self.model.model(**inputs, use_cache=False)
            return [TeacherForward() for _ in samples]
        image_encoder = self.model.model.get_image_features
        image_inputs = {name: inputs[name] for name in inspect.signature(image_encoder).parameters if name in inputs}
        with torch.no_grad():
            features = image_encoder(**image_inputs)
        embeds, features.pooler_output = image_embedding_leaf(features.pooler_output)
        text_inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}
        ids = inputs["input_ids"]
        # Compiled blocks run eagerly here: the batched vector-Jacobian products vmap over the backward, which
        # inductor's compiled backward graphs do not support (the image encoder above, without gradients, is compiled).
        with torch.enable_grad(), torch.compiler.set_stance("force_eager"):
            hidden = self.model.model(**text_inputs, mm_encoder_outputs={"image": features}, use_cache=False)[0]
            with torch.profiler.record_function("lavit_gradient_trajectory"):
                nlls = [
                    response_nll(self.model.lm_head, hidden[row], ids[row], s.span) for row, s in enumerate(samples)
                ]
                image_tokens = [len(sample.image_positions) for sample in samples]
                magnitudes = batched_token_grads(nlls, embeds, image_tokens, self.settings.gradient_batch_size)
        return [TeacherForward(gradient=magnitude.cpu()) for magnitude in magnitudes]


def image_embedding_leaf(pooler_output: torch.Tensor | tuple[torch.Tensor, ...]):
    """`(leaf, same_structure)`: the image embeddings as one `[N, d]` leaf tensor that requires grad (N image tokens,
    in sequence order), and the family's structure rebuilt as views of it (Qwen: one `(n_i, d)` tensor per image;
    Gemma 3: `(images, tokens, d)`), so the gradient with respect to every image token lands on the leaf."""
    if isinstance(pooler_output, torch.Tensor):
        leaf = pooler_output.detach().reshape(-1, pooler_output.shape[-1]).requires_grad_(True)
        return leaf, leaf.view(pooler_output.shape)
    sizes = [part.shape[0] for part in pooler_output]
    leaf = torch.cat([part.detach() for part in pooler_output]).requires_grad_(True)
    return leaf, tuple(leaf.split(sizes))


def response_nll(lm_head: torch.nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor, span: tuple[int, int]):
    """`[R]` negative log-likelihood of each response token; logits only at the R predicting positions."""
    start, end = span
    logits = lm_head(hidden[start - 1 : end - 1]).float()
    return torch.nn.functional.cross_entropy(logits, input_ids[start:end], reduction="none")


def batched_token_grads(
    nlls: list[torch.Tensor], embeds: torch.Tensor, image_tokens: list[int], batch_size: int
) -> list[torch.Tensor]:
    """Per sample `[R_b, N_b]`: per response token, `|d nll_t / d embeds|` on the sample's image embeddings, averaged
    over the hidden dimension.

    The samples of a batch do not interact (no attention across rows), so one cotangent can carry one token of every
    sample: cotangent `k` is one on each sample's `k`-th response token, and the gradient it gives on sample `b`'s
    image embeddings is exactly `d nll_{b,k} / d E_b`. The cotangents of `batch_size // samples` tokens (at least one)
    go through one batched vector-Jacobian product (`is_grads_batched=True`, vmap over the backward) of a single
    retained graph, so the forward runs once for every token of every sample and one backward computes at most
    `max(batch_size, samples)` per-token gradients.

    Args:
        nlls (`list[torch.Tensor]`): per sample, its `[R_b]` response tokens' negative log-likelihoods.
        embeds (`torch.Tensor` of shape `(sum N_b, d)`): the image embeddings of every sample, in sample order.
        image_tokens (`list[int]`): `N_b`, each sample's rows of `embeds`.
        batch_size (`int`): per-token gradients per backward.
    """
    counts = [len(nll) for nll in nlls]
    flat = torch.cat(nlls)
    starts = [sum(counts[:b]) for b in range(len(counts))]
    image_starts = [sum(image_tokens[:b]) for b in range(len(image_tokens))]
    tokens_per_backward = max(1, batch_size // len(nlls))
    per_sample: list[list[torch.Tensor]] = [[] for _ in nlls]
    for first in range(0, max(counts), tokens_per_backward):
        ks = range(first, min(first + tokens_per_backward, max(counts)))
        cotangents = torch.zeros(len(ks), len(flat), device=flat.device, dtype=flat.dtype)
        for row, k in enumerate(ks):
            for sample, count in enumerate(counts):
                if k < count:
                    cotangents[row, starts[sample] + k] = 1
        (grad,) = torch.autograd.grad(flat, embeds, grad_outputs=cotangents, retain_graph=True, is_grads_batched=True)
        magnitudes = grad.float().abs().mean(-1)  # [len(ks), sum N_b]
        for sample, count in enumerate(counts):
            rows = min(count - first, len(ks))
            if rows > 0:
                start = image_starts[sample]
                per_sample[sample].append(magnitudes[:rows, start : start + image_tokens[sample]])
    return [torch.cat(parts) for parts in per_sample]


def normalise(weights: torch.Tensor) -> torch.Tensor:
    """Divide by the sum over the last dimension, refusing an all-zero or non-finite row (never a silent fill)."""
    total = weights.sum(-1, keepdim=True)
    if not bool(torch.isfinite(weights).all()) or bool((total <= 0).any()):
        raise TeacherError("a trajectory has no finite positive mass to normalise")
    return weights / total


__all__ = [
    "DEFAULT_ATTENTION_LAYERS",
    "GENERATION_CACHES",
    "STEP_SPLITS",
    "TEACHER_FAMILIES",
    "TRAJECTORY_METHODS",
    "UNKNOWN_GRID_FAMILIES",
    "AttentionRowCapture",
    "EncodedBatch",
    "EncodedSample",
    "ExtractionSettings",
    "GenerationSettings",
    "TeacherError",
    "TeacherExtractor",
    "TeacherFamily",
    "TeacherForward",
    "TeacherOutput",
    "TrajectoryMethod",
    "batched_token_grads",
    "gradient_distributions",
    "image_embedding_leaf",
    "normalise",
    "register_trajectory_method",
    "response_nll",
    "split_steps",
    "teacher_family",
]
