"""Attention functions LaViT registers with transformers' `AttentionInterface`.

- Flex attention for the language model under a name Qwen2.5-VL accepts. Qwen2.5-VL refuses
  `attn_implementation="flex_attention"`, yet its text attention runs the same kernels when they are registered under
  another name (docs/pitfalls.md, "Attention masks"). The stage-1 mask function then becomes a `BlockMask`, so fully
  blocked tiles are skipped instead of being computed and masked.
- The packed vision attention: the vision tower's windowed attention in one sdpa call per layer.
- The observed attention: sdpa that also hands its query, keys and mask to an observer, which scores a few query rows
  against every key exactly as eager attention would (with gradients): how the student's latent tokens' attention over
  the image is read for `trajectory_prediction="latent_attention"`.

This file is copied next to saved checkpoints with the modeling code (remote code): it imports only torch and
transformers.
"""

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.flex_attention import flex_attention_forward
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import flex_attention_mask, sdpa_mask


FLEX_ATTENTION = "lavit_flex"


def register_flex_attention(name: str = FLEX_ATTENTION) -> str:
    """Register transformers' flex attention kernels and mask builder under `name`, and return it.

    Example:

    ```python
    >>> from lavit_hf.attention import register_flex_attention
    >>> name = register_flex_attention()
    >>> # model.set_attn_implementation({"text_config": name, "vision_config": "sdpa"})  # on a GPU
    ```
    """
    AttentionInterface.register(name, flex_attention_forward)
    AttentionMaskInterface.register(name, flex_attention_mask)
    return name


# Differ from Qwen (speed only, same function): Qwen2.5-VL's vision tower under "sdpa" splits every layer's windowed
# attention into one sdpa call per window after a `.tolist()` host sync (about 100 windows x 28 layers for a 1344x1008
# image). Its flash path instead hands the attention function the packed segments (`cu_seq_lens_q`, `max_length_q`);
# it is taken for any implementation whose name contains "flash", hence the name. The function below runs each layer
# as ONE sdpa call over the segments laid side by side. Vision config only: the text model has no packed segments.
PACKED_VISION_ATTENTION = "lavit_packed_sdpa_flash"


def packed_sdpa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    is_causal: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Non-causal attention within each packed segment (a vision window or image) in a single sdpa call.

    `query`, `key`, `value`: `(1, heads, total, head_dim)`, the segments back to back as `cu_seq_lens_q` (int,
    `(segments + 1,)`) delimits them; `max_length_q` is the longest segment (a Python int). Returns `(1, total, heads,
    head_dim)` as transformers' flash functions do. When every segment has the longest length (the usual case: full
    windows, or one image per attention), the segments are a reshape into a batch and sdpa runs unmasked (flash
    kernel); otherwise they are scattered into a zero-padded batch and padded keys are masked out (padded query rows
    attend to real keys and are dropped). Equals one sdpa call per segment up to kernel rounding.
    """
    if cu_seq_lens_q is None or max_length_q is None:  # not a packed call: plain sdpa
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    if is_causal or query.shape[0] != 1:
        raise ValueError("packed_sdpa_attention_forward handles the vision tower's packed, non-causal attention only.")
    _, heads, total, head_dim = query.shape
    segments, length = cu_seq_lens_q.numel() - 1, int(max_length_q)
    # (1, heads, total, dim) -> (total, heads, dim): a view, the layout `cu_seq_lens_q` indexes.
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    if segments * length == total:  # all segments equally long: a reshape (splitting `total` is always a view)
        q, k, v = (t.unflatten(0, (segments, length)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling)
        return out.transpose(1, 2).reshape(1, total, heads, head_dim), None
    starts = cu_seq_lens_q.to(device=query.device, dtype=torch.long)
    positions = torch.arange(total, device=query.device)
    # The segment of each packed position: how many segment ends lie at or before it (a comparison, not
    # `searchsorted`, whose inductor lowering fails on a sliced boundary tensor under torch.compile).
    segment = (positions.unsqueeze(1) >= starts[1:].unsqueeze(0)).sum(dim=1)
    offset = positions - starts[segment]
    padded = []
    for t in (q, k, v):
        buffer = t.new_zeros(segments, length, heads, head_dim)
        padded.append(buffer.index_put((segment, offset), t).transpose(1, 2))
    key_is_real = torch.arange(length, device=query.device) < (starts[1:] - starts[:-1]).unsqueeze(1)
    out = F.scaled_dot_product_attention(
        *padded, attn_mask=key_is_real[:, None, None, :], dropout_p=dropout, scale=scaling
    )
    return out.transpose(1, 2)[segment, offset].unsqueeze(0), None


AttentionInterface.register(PACKED_VISION_ATTENTION, packed_sdpa_attention_forward)


def use_packed_vision_attention(model: nn.Module) -> bool:
    """Run the vision tower of a Qwen2.5-VL or LaViT `model` with `packed_sdpa_attention_forward` when it is set to
    "sdpa" (the default); other choices (eager, flash-attn kernels) are left alone. Returns whether it switched.
    Speed only: the outputs equal the per-window loop up to kernel rounding."""
    vision_config = model.config.vision_config
    if vision_config._attn_implementation != "sdpa":
        return False
    vision_config._attn_implementation = PACKED_VISION_ATTENTION
    return True


# Observed attention ---------------------------------------------------------------------------------------------

OBSERVED_ATTENTION = "lavit_observed_sdpa"
# Implementations whose attention is the same function as the observed one (sdpa, eager): a model set to another
# (flash or flex kernels) is refused rather than silently switched to slower kernels.
OBSERVABLE_IMPLEMENTATIONS = ("sdpa", "eager", OBSERVED_ATTENTION)


class AttentionObserver(Protocol):
    def observe(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
        is_causal: bool,
    ) -> None: ...


_ACTIVE_OBSERVER: contextvars.ContextVar[AttentionObserver | None] = contextvars.ContextVar(
    "lavit_attention_observer", default=None
)


def attention_row_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    is_causal: bool,
    rows: torch.LongTensor,
) -> torch.Tensor:
    """The attention weights of the query rows `rows` over every key, in float32: what eager attention computes for
    those rows (scores scaled, the layer's own mask applied, softmax over the keys), without an `[S, S]` matrix.
    Differentiable with respect to `query` and `key`.

    Args:
        query (`torch.Tensor` of shape `(batch_size, heads, seq_len, head_dim)`): the layer's queries (after RoPE).
        key (`torch.Tensor` of shape `(batch_size, kv_heads, seq_len, head_dim)`): its keys; grouped-query keys are
            shared by `heads // kv_heads` query heads.
        attention_mask (`torch.Tensor` of shape `(batch_size or 1, 1, seq_len, seq_len)`, *optional*): sdpa's mask,
            boolean (True = may attend) or additive; `None` means causal (with `is_causal`) or nothing.
        scaling (`float`, *optional*): the score scale; defaults to `head_dim ** -0.5`.
        is_causal (`bool`): the causal rule sdpa applies when no mask is given.
        rows (`torch.LongTensor` of shape `(batch_size, n_rows)`): the query positions of each sample.

    Returns:
        `torch.Tensor` of shape `(batch_size, heads, n_rows, seq_len)`.
    """
    batch_size, heads, _, head_dim = query.shape
    scale = scaling if scaling is not None else head_dim**-0.5
    selected = query.gather(2, rows[:, None, :, None].expand(-1, heads, -1, head_dim)).float()
    keys = key.float().repeat_interleave(heads // key.shape[1], dim=1)
    scores = torch.matmul(selected, keys.transpose(2, 3)) * scale
    if attention_mask is None:
        if is_causal:
            future = torch.arange(key.shape[2], device=rows.device)[None, None, :] > rows[:, :, None]
            scores = scores.masked_fill(future[:, None], float("-inf"))
    else:
        mask = attention_mask.expand(batch_size, -1, -1, -1)
        mask_rows = mask.gather(2, rows[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[3]))
        if mask_rows.dtype == torch.bool:
            scores = scores.masked_fill(~mask_rows, float("-inf"))
        else:
            scores = scores + mask_rows.float()
    return scores.softmax(-1)


def observed_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """sdpa attention that also hands its inputs to the active observer (if any); its output is sdpa's."""
    observer = _ACTIVE_OBSERVER.get()
    if observer is not None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        observer.observe(module, query, key, attention_mask, scaling, causal)
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, is_causal=is_causal, **kwargs
    )


AttentionInterface.register(OBSERVED_ATTENTION, observed_sdpa_attention)
AttentionMaskInterface.register(OBSERVED_ATTENTION, sdpa_mask)


@contextlib.contextmanager
def observing_attention(model: nn.Module, observer: AttentionObserver) -> Iterator[None]:
    """Run `model`'s text attention through `observed_sdpa_attention` into `observer`, then restore its implementation.

    Raises:
        ValueError: the text attention is neither sdpa nor eager (flash or flex kernels never hand their weights out).
    """
    text_config = model.config.get_text_config()
    previous = text_config._attn_implementation
    if previous not in OBSERVABLE_IMPLEMENTATIONS:
        raise ValueError(
            f"Reading attention weights needs the text attention 'sdpa' or 'eager', not {previous!r}: load the model "
            "with attn_implementation='sdpa'."
        )
    model.set_attn_implementation({"text_config": OBSERVED_ATTENTION})
    token = _ACTIVE_OBSERVER.set(observer)
    try:
        yield
    finally:
        _ACTIVE_OBSERVER.reset(token)
        model.set_attn_implementation({"text_config": previous})


class LatentAttentionRecorder:
    """The attention that each sample's latent tokens pay to every key, on the selected layers, with gradients.

    Args:
        modules (`dict[nn.Module, int]`): the attention modules to read, each with its layer index.
        rows (`torch.LongTensor` of shape `(batch_size, K)`): the latent tokens' positions.
    """

    def __init__(self, modules: dict[nn.Module, int], rows: torch.LongTensor):
        self.modules = modules
        self.rows = rows
        self.per_layer: dict[int, torch.Tensor] = {}

    def observe(self, module, query, key, attention_mask, scaling, is_causal) -> None:
        layer = self.modules.get(module)
        if layer is None:
            return
        if query.shape[2] != key.shape[2]:
            raise ValueError("The latent attention is read from a whole sequence, not under a KV cache.")
        weights = attention_row_weights(query, key, attention_mask, scaling, is_causal, self.rows)
        self.per_layer[layer] = weights.mean(1)

    def mean(self) -> torch.Tensor:
        """`(batch_size, K, seq_len)`: the head- and layer-averaged weights of each latent token."""
        missing = sorted(set(self.modules.values()) - set(self.per_layer))
        if missing:
            raise ValueError(f"No attention call was observed in layers {missing}.")
        return torch.stack([self.per_layer[layer] for layer in sorted(self.per_layer)]).mean(0)


__all__ = [
    "FLEX_ATTENTION",
    "OBSERVED_ATTENTION",
    "PACKED_VISION_ATTENTION",
    "AttentionObserver",
    "LatentAttentionRecorder",
    "attention_row_weights",
    "observed_sdpa_attention",
    "observing_attention",
    "packed_sdpa_attention_forward",
    "register_flex_attention",
    "use_packed_vision_attention",
]
