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
# (flash or flex kernels) is refused rather than silently switched to other kernels.
OBSERVABLE_IMPLEMENTATIONS = ("sdpa", "eager", OBSERVED_ATTENTION)
# Named in `torch.profiler` traces (the extraction benchmark splits the forward by it).
OBSERVE_RANGE = "lavit_attention_capture"
# Set on the attention modules an observer reads while `observing_attention` runs: a plain attribute, so that under
# torch.compile the layers that are read and those that are not each get a graph of their own.
_OBSERVED_MODULE = "_lavit_observed_attention"


class AttentionObserver(Protocol):
    """What `observing_attention` hands a layer's attention inputs to."""

    modules: dict[nn.Module, int]  # the attention modules to read, each with its layer index

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
    real_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """The head-averaged attention weights of the query rows `rows` over every key, in float32: what eager attention
    computes for those rows (scores scaled, the layer's own mask applied, softmax over the keys, then the mean over
    the heads), without an `[S, S]` matrix or a copy of the grouped keys. Differentiable in `query` and `key`.

    Args:
        query (`torch.Tensor` of shape `(batch_size, heads, seq_len, head_dim)`): the layer's queries (after RoPE).
        key (`torch.Tensor` of shape `(batch_size, kv_heads, seq_len, head_dim)`): its keys; key head `h` serves
            query heads `h * groups` to `(h + 1) * groups - 1`, as `repeat_kv` lays them out.
        attention_mask (`torch.Tensor` of shape `(batch_size or 1, 1, seq_len, seq_len)`, *optional*): sdpa's mask,
            boolean (True = may attend) or additive; `None` means causal (with `is_causal`) or nothing.
        scaling (`float`, *optional*): the score scale; defaults to `head_dim ** -0.5`.
        is_causal (`bool`): the causal rule sdpa applies when no mask is given.
        rows (`torch.LongTensor` of shape `(batch_size, n_rows)`): the query positions of each sample.
        real_keys (`torch.BoolTensor` of shape `(batch_size, seq_len)`, *optional*): keys each sample may attend to at
            all (its right padding left out, where the mask does not say so).

    Returns:
        `torch.Tensor` of shape `(batch_size, n_rows, seq_len)`.
    """
    batch, heads, length, head_dim = query.shape
    kv_heads, n_rows = key.shape[1], rows.shape[1]
    scale = scaling if scaling is not None else head_dim**-0.5
    picked = query.gather(2, rows[:, None, :, None].expand(batch, heads, n_rows, head_dim)).float()
    keys = key.float().transpose(2, 3).unsqueeze(2)  # (batch, kv_heads, 1, head_dim, seq_len)
    scores = torch.matmul(picked.view(batch, kv_heads, heads // kv_heads, n_rows, head_dim), keys)
    scores = scores.view(batch, heads, n_rows, length) * scale
    allowed = torch.ones(batch, 1, 1, length, dtype=torch.bool, device=rows.device)
    if real_keys is not None:
        allowed = allowed & real_keys[:, None, None, :]
    if attention_mask is None:  # sdpa's own rule for a missing mask: causal, or nothing
        if is_causal:
            allowed = allowed & (torch.arange(length, device=rows.device) <= rows[:, None, :, None])
    else:  # each sample's mask rows (a mask broadcast over the batch has a batch dimension of 1)
        samples = torch.arange(batch, device=rows.device) if attention_mask.shape[0] > 1 else rows.new_zeros(batch)
        mask_rows = attention_mask[samples[:, None], :, rows, :length].transpose(1, 2)  # (batch, 1, n_rows, seq_len)
        if mask_rows.dtype == torch.bool:
            allowed = allowed & mask_rows
        else:
            scores = scores + mask_rows.float()
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1).mean(1)


@torch.compiler.disable
def _observe(module, query, key, attention_mask, scaling, is_causal) -> None:
    """Hand a read layer's attention inputs to the active observer. Always eager: in a compiled layer the graph breaks
    here, and the observer sees the real tensors of this forward (with their autograd history)."""
    observer = _ACTIVE_OBSERVER.get()
    if observer is not None:
        with torch.profiler.record_function(OBSERVE_RANGE):
            observer.observe(module, query, key, attention_mask, scaling, is_causal)


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
    """sdpa attention that also hands its inputs to the active observer on the layers it reads; its output is sdpa's."""
    if getattr(module, _OBSERVED_MODULE, False):
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        _observe(module, query, key, attention_mask, scaling, causal)
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, is_causal=is_causal, **kwargs
    )


AttentionInterface.register(OBSERVED_ATTENTION, observed_sdpa_attention)
AttentionMaskInterface.register(OBSERVED_ATTENTION, sdpa_mask)


@contextlib.contextmanager
def observing_attention(model: nn.Module, observer: AttentionObserver) -> Iterator[None]:
    """Run `model`'s text attention through `observed_sdpa_attention`, handing the layers in `observer.modules` to
    `observer`, then restore its implementation.

    Raises:
        ValueError: the text attention is neither sdpa nor eager (flash or flex kernels never hand their weights out).
    """
    previous = model.config.get_text_config()._attn_implementation
    if previous not in OBSERVABLE_IMPLEMENTATIONS:
        raise ValueError(
            f"Reading attention weights needs the text attention 'sdpa' or 'eager', not {previous!r}: load the model "
            "with attn_implementation='sdpa'."
        )
    model.set_attn_implementation({"text_config": OBSERVED_ATTENTION})
    token = _ACTIVE_OBSERVER.set(observer)
    for module in observer.modules:
        setattr(module, _OBSERVED_MODULE, True)
    try:
        yield
    finally:
        for module in observer.modules:
            delattr(module, _OBSERVED_MODULE)
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
        layer = self.modules[module]
        if query.shape[2] != key.shape[2]:
            raise ValueError("The latent attention is read from a whole sequence, not under a KV cache.")
        if layer in self.per_layer:
            raise ValueError(f"Layer {layer}'s attention was observed twice in one forward.")
        self.per_layer[layer] = attention_row_weights(query, key, attention_mask, scaling, is_causal, self.rows)

    def mean(self) -> torch.Tensor:
        """`(batch_size, K, seq_len)`: the head- and layer-averaged weights of each latent token."""
        missing = sorted(set(self.modules.values()) - set(self.per_layer))
        if missing:
            raise ValueError(f"No attention call was observed in layers {missing}.")
        return torch.stack([self.per_layer[layer] for layer in sorted(self.per_layer)]).mean(0)


__all__ = [
    "FLEX_ATTENTION",
    "OBSERVED_ATTENTION",
    "OBSERVE_RANGE",
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
