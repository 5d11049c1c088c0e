"""Teacher-side extraction (METHOD.md section 1): the teacher's response, V_top and the two trajectories.

One forward pass over image + question + response gives, per sample:

- **V_top**: a forward hook on the last decoder layer keeps its output (before the final norm) at the image-token
  positions.
- **Attention trajectory**: forward pre-hooks on the selected layers' self-attention recompute the queries of the
  response rows only (after RoPE) and the keys of the whole sequence, so the teacher itself runs under `sdpa` and
  never materialises an `[S, S]` attention matrix. The rows' softmax over all keys (causal) is exactly what
  `eager` attention with `output_attentions=True` would give for those rows.
- **Gradient trajectory** (when asked): the same forward runs with gradients enabled with respect to the image
  embeddings (the vision tower's output after the merger), and the per-token gradients of the response tokens' NLL
  come from batched vector-Jacobian products over one retained graph (`is_grads_batched=True`), never one forward
  per token.

Distribution rules (documented in the dataset card):

- attention: `A[r, i]` = mean over heads and layers of the attention weight from response row `r` to image token `i`;
  the trajectory is `mean_r A[r, :]` renormalised to sum to 1 over the image tokens.
- gradient: `g[t, i]` = mean over the hidden dimension of `|d NLL_t / d E[i]|`. Each token's magnitudes are
  normalised first: with no temperature, `p_t = g_t / sum_i g_t[i]`; with a temperature `T`,
  `p_t = softmax((g_t / max_i g_t[i]) / T)` (so `T` acts on values in [0, 1], not on raw magnitudes as in the
  reference code). The trajectory is `mean_t p_t`, renormalised.
"""

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb, repeat_kv

from lavit_hf.layout import render_prompt


logger = logging.getLogger(__name__)

TRAJECTORY_METHODS = ("attention", "gradient")
STEP_SPLITS = ("none", "newline", "sentence")
# METHOD.md section 1: the attention method averages the last 8 language-model layers.
DEFAULT_ATTENTION_LAYERS = 8


class TeacherError(RuntimeError):
    """A sample the teacher could not process (empty response, tokenisation mismatch, degenerate trajectory)."""


@dataclass
class GenerationSettings:
    """How the teacher writes its response (METHOD.md section 1: greedy, repetition penalty 1.05, 1024 tokens).

    Args:
        max_new_tokens (`int`, *optional*, defaults to 1024): longest response.
        do_sample (`bool`, *optional*, defaults to `False`): greedy when `False`.
        repetition_penalty (`float`, *optional*, defaults to 1.05): as in the reference code.
        temperature (`float`, *optional*, defaults to 1.0): only used when sampling.
        top_p (`float`, *optional*, defaults to 1.0): only used when sampling.
        batch_size (`int`, *optional*, defaults to 8): prompts generated together (left padding).
    """

    max_new_tokens: int = 1024
    do_sample: bool = False
    repetition_penalty: float = 1.05
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 8

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        kwargs["repetition_penalty"] = self.repetition_penalty
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        else:
            # Greedy: unset the sampling knobs a checkpoint's generation_config may carry, so none is silently used.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class ExtractionSettings:
    """What is extracted from each sample.

    Args:
        methods (`tuple[str, ...]`, *optional*, defaults to `("attention",)`): trajectories to compute.
        attention_layers (`list[int]`, *optional*): teacher layers averaged by the attention method; negative
            indices count from the end. Defaults to the last 8 (METHOD.md section 1), or all of a shallower teacher.
        gradient_temperature (`float`, *optional*): temperature of the gradient method's softmax; `None` divides the
            magnitudes by their sum instead (see the module docstring).
        gradient_batch_size (`int`, *optional*, defaults to 32): per-token gradients computed per batched backward.
        row_chunk (`int`, *optional*, defaults to 256): response rows scored at once by the attention hooks.
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
        unknown = set(self.methods) - set(TRAJECTORY_METHODS)
        if unknown or not self.methods:
            raise ValueError(f"methods={self.methods}: expected a non-empty subset of {TRAJECTORY_METHODS}.")
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
    trajectories: dict[str, torch.Tensor] = field(default_factory=dict)
    step_trajectories: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class EncodedSample:
    """Processor output for prompt + response, with the response span and the image geometry."""

    inputs: dict[str, torch.Tensor]
    span: tuple[int, int]
    offsets: list[tuple[int, int]]
    image_positions: torch.Tensor
    grid: tuple[int, int]


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
    for a, b in zip(bounds[:-1], bounds[1:]):
        steps.append((a, b, response[offsets[a][0] : offsets[b - 1][1]].strip()))
    return steps


class AttentionRowCapture:
    """Forward pre-hooks on the selected layers' self-attention that compute the response rows' attention.

    For each hooked layer the hook recomputes `q = RoPE(q_proj(x))` for the response rows only and
    `k = RoPE(k_proj(x))` for all positions (the layer's own projections and rotary embedding, so the numbers are
    those the layer uses), softmaxes the rows' causal scores in float32 and keeps the mean over heads of the weights
    on the image tokens. Memory: `rows x S x heads` per chunk of `row_chunk` rows, never `S x S`.
    """

    def __init__(self, rows: torch.Tensor, image_positions: torch.Tensor, row_chunk: int):
        self.rows = rows
        self.image_positions = image_positions
        self.row_chunk = row_chunk
        self.per_layer: list[torch.Tensor] = []

    def __call__(self, module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cos, sin = kwargs["position_embeddings"]
        with torch.no_grad():
            hidden = hidden.detach()
            keys = module.k_proj(hidden).view(1, hidden.shape[1], -1, module.head_dim).transpose(1, 2)
            _, keys = apply_rotary_pos_emb(keys, keys, cos, sin)
            keys = repeat_kv(keys, module.num_key_value_groups).float()
            chunks = [self._rows(module, hidden, keys, cos, sin, r) for r in self.rows.split(self.row_chunk)]
        self.per_layer.append(torch.cat(chunks))

    def _rows(self, module, hidden, keys, cos, sin, rows):
        queries = module.q_proj(hidden[:, rows]).view(1, len(rows), -1, module.head_dim).transpose(1, 2)
        queries, _ = apply_rotary_pos_emb(queries, queries, cos[:, rows], sin[:, rows])
        scores = torch.matmul(queries.float(), keys.transpose(2, 3)) * module.scaling
        # Causal: row r sees keys 0..r (one unpadded sample per forward, so no padding mask is needed).
        future = torch.arange(keys.shape[2], device=rows.device)[None, :] > rows[:, None]
        weights = scores.masked_fill(future, float("-inf")).softmax(-1)
        return weights[0][:, :, self.image_positions].mean(0)

    def mean(self) -> torch.Tensor:
        """`[rows, n_image]`: the mean over hooked layers of the head-averaged weights."""
        return torch.stack(self.per_layer).mean(0)


class TeacherExtractor:
    """Runs a Qwen2.5-VL teacher over samples: batched generation, then one forward per sample for V_top and the
    trajectories.

    Args:
        model (`Qwen2_5_VLForConditionalGeneration`): the teacher, any attention implementation (`sdpa` advised).
        processor (`Qwen2_5_VLProcessor`): its processor; its pixel limits set the teacher's resolution.
        settings (`ExtractionSettings`): what to extract.
        generation (`GenerationSettings`, *optional*): how the teacher answers.

    Example:

    ```python
    >>> from PIL import Image
    >>> from lavit_hf import build_tiny_qwen2_5_vl
    >>> from datasets_scripts.teacher import ExtractionSettings, TeacherExtractor
    >>> model, processor = build_tiny_qwen2_5_vl(seed=1)
    >>> extractor = TeacherExtractor(model, processor, ExtractionSettings(attention_layers=[-1]))
    >>> out = extractor.extract(Image.new("RGB", (112, 56)), "What is it?", "A gray field.")
    >>> out.grid, round(float(out.trajectories["attention"].sum()), 4)
    ((2, 4), 1.0)
    ```
    """

    def __init__(self, model, processor, settings: ExtractionSettings, generation: GenerationSettings | None = None):
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
        self.merge = model.config.vision_config.spatial_merge_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    # Generation ------------------------------------------------------------------------------------------------

    def generate(self, images: list[Image.Image], questions: list[str]) -> list[str]:
        """The teacher's responses to a batch of prompts (left padding), stripped of surrounding whitespace."""
        tokenizer = self.processor.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            texts = [render_prompt(self.processor, q) for q in questions]
            enc = self.processor(text=texts, images=images, padding=True, return_tensors="pt").to(self.device)
            with torch.no_grad():
                kwargs = self.generation.generate_kwargs()
                out = self.model.generate(**enc, **kwargs, pad_token_id=tokenizer.pad_token_id)
        finally:
            tokenizer.padding_side = side
        new = out[:, enc["input_ids"].shape[1] :]
        return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]

    # Encoding --------------------------------------------------------------------------------------------------

    def encode(self, image: Image.Image, question: str, response: str) -> EncodedSample:
        """Tokenise prompt + response and locate the response tokens from the tokenizer's offsets.

        The response is tokenised alone (with offsets) and must be the exact suffix of the full sequence; this
        fails loudly if the chat template's last token and the response's first merge into one token.
        """
        if not response:
            raise TeacherError("empty teacher response")
        full = render_prompt(self.processor, question) + response
        inputs = self.processor(text=[full], images=[image], return_tensors="pt")
        alone = self.processor.tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        ids, resp = inputs["input_ids"][0].tolist(), alone["input_ids"]
        if not resp or ids[-len(resp) :] != resp:
            raise TeacherError("the response's tokens differ inside the full sequence (tokeniser boundary merge)")
        image_positions = (inputs["input_ids"][0] == self.model.config.image_token_id).nonzero().flatten()
        t, h, w = inputs["image_grid_thw"][0].tolist()
        grid = (h // self.merge, w // self.merge)
        if t * grid[0] * grid[1] != len(image_positions):
            raise TeacherError(f"{len(image_positions)} image tokens for a grid of t={t}, {grid}")
        span = (len(ids) - len(resp), len(ids))
        return EncodedSample(inputs, span, [tuple(o) for o in alone["offset_mapping"]], image_positions, grid)

    # Extraction ------------------------------------------------------------------------------------------------

    def extract(self, image: Image.Image, question: str, response: str) -> TeacherOutput:
        """V_top and the trajectories of one sample from one forward pass (see the module docstring)."""
        sample = self.encode(image, question, response)
        steps = split_steps(response, sample.offsets, self.settings.split_steps)
        inputs = {k: v.to(self.device) for k, v in sample.inputs.items()}
        rows = torch.arange(*sample.span, device=self.device)
        image_positions = sample.image_positions.to(self.device)
        capture, vtop, handles = self._install_hooks(rows, image_positions)
        try:
            grad_tokens = self._forward(inputs, sample.span, "gradient" in self.settings.methods)
        finally:
            for handle in handles:
                handle.remove()
        out = TeacherOutput(response, [s[2] for s in steps], sample.span, sample.grid, self.layers, vtop[0].cpu())
        per_token = {}
        if capture is not None:
            per_token["attention"] = capture.mean()
        if grad_tokens is not None:
            per_token["gradient"] = grad_tokens
        for method, matrix in per_token.items():
            out.trajectories[method] = normalise(matrix.mean(0)).cpu()
            out.step_trajectories[method] = torch.stack([normalise(matrix[a:b].mean(0)) for a, b, _ in steps]).cpu()
        return out

    def _install_hooks(self, rows: torch.Tensor, image_positions: torch.Tensor):
        vtop: list[torch.Tensor] = []

        def keep_vtop(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            vtop.append(hidden[0, image_positions].detach().float())

        handles = [self.decoder_layers[-1].register_forward_hook(keep_vtop)]
        capture = None
        if "attention" in self.settings.methods:
            capture = AttentionRowCapture(rows, image_positions, self.settings.row_chunk)
            for layer in self.layers:
                attn = self.decoder_layers[layer].self_attn
                handles.append(attn.register_forward_pre_hook(capture, with_kwargs=True))
        return capture, vtop, handles

    def _forward(self, inputs: dict[str, torch.Tensor], span: tuple[int, int], with_gradient: bool):
        """The one forward pass; returns the per-token gradient distributions `[R, N]` when asked, else `None`."""
        if not with_gradient:
            with torch.no_grad():
                # The base model only: no LM head over the whole sequence (V_top and attention need no logits).
                self.model.model(**inputs, use_cache=False)
            return None
        with torch.no_grad():
            features = self.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        embeds = torch.cat(features.pooler_output).detach().requires_grad_(True)
        encoder_out = {"image": BaseModelOutputWithPooling(pooler_output=(embeds,))}
        text_inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}
        with torch.enable_grad():
            hidden = self.model.model(**text_inputs, mm_encoder_outputs=encoder_out, use_cache=False)[0]
            nll = response_nll(self.model.lm_head, hidden[0], inputs["input_ids"][0], span)
            grads = batched_token_grads(nll, embeds, self.settings.gradient_batch_size)
        return gradient_distributions(grads, self.settings.gradient_temperature)


def response_nll(lm_head: torch.nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor, span: tuple[int, int]):
    """`[R]` negative log-likelihood of each response token; logits only at the R predicting positions."""
    start, end = span
    logits = lm_head(hidden[start - 1 : end - 1]).float()
    return torch.nn.functional.cross_entropy(logits, input_ids[start:end], reduction="none")


def batched_token_grads(nll: torch.Tensor, embeds: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`[R, N]`: per response token, `|d nll_t / d embeds|` averaged over the hidden dimension.

    The gradients of `batch_size` tokens come from one batched vector-Jacobian product (`is_grads_batched=True`,
    vmap over the backward) of a single retained graph, so the forward runs once for all tokens.
    """
    eye = torch.eye(len(nll), device=nll.device, dtype=nll.dtype)
    magnitudes = []
    for rows in eye.split(batch_size):
        (grad,) = torch.autograd.grad(nll, embeds, grad_outputs=rows, retain_graph=True, is_grads_batched=True)
        magnitudes.append(grad.float().abs().mean(-1))
    return torch.cat(magnitudes)


def gradient_distributions(magnitudes: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """Turn per-token magnitudes `[R, N]` into per-token distributions (rule in the module docstring)."""
    if temperature is None:
        return normalise(magnitudes)
    peak = magnitudes.amax(-1, keepdim=True)
    if bool((peak <= 0).any()):
        raise TeacherError("a response token has zero gradient on every image token")
    return torch.softmax(magnitudes / peak / temperature, dim=-1)


def normalise(weights: torch.Tensor) -> torch.Tensor:
    """Divide by the sum over the last dimension, refusing an all-zero or non-finite row (never a silent fill)."""
    total = weights.sum(-1, keepdim=True)
    if not bool(torch.isfinite(weights).all()) or bool((total <= 0).any()):
        raise TeacherError("a trajectory has no finite positive mass to normalise")
    return weights / total


__all__ = [
    "DEFAULT_ATTENTION_LAYERS",
    "STEP_SPLITS",
    "TRAJECTORY_METHODS",
    "EncodedSample",
    "ExtractionSettings",
    "GenerationSettings",
    "TeacherError",
    "TeacherExtractor",
    "TeacherOutput",
    "batched_token_grads",
    "gradient_distributions",
    "normalise",
    "response_nll",
    "split_steps",
]
