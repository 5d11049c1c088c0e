"""Attention functions LaViT registers with transformers' `AttentionInterface`.

- Flex attention for the language model under a name Qwen2.5-VL accepts. Qwen2.5-VL refuses
  `attn_implementation="flex_attention"`, yet its text attention runs the same kernels when they are registered under
  another name (docs/pitfalls.md, "Attention masks"). The stage-1 mask function then becomes a `BlockMask`, so fully
  blocked tiles are skipped instead of being computed and masked.
- The packed vision attention: the vision tower's windowed attention in one sdpa call per layer.

This file is copied next to saved checkpoints with the modeling code (remote code): it imports only torch and
transformers.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.flex_attention import flex_attention_forward
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import flex_attention_mask


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


__all__ = [
    "FLEX_ATTENTION",
    "PACKED_VISION_ATTENTION",
    "packed_sdpa_attention_forward",
    "register_flex_attention",
    "use_packed_vision_attention",
]
