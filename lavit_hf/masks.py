"""LaViT's attention rules (docs/method.md sections 3 and 4) and the masks a family's text model is handed.

- The stage-1 bottleneck and the `mask_latent` diagnostic are boolean mask *functions* `fn(batch, head, q, kv)`,
  combined with causality and padding by transformers' `create_causal_mask(..., and_mask_function=fn)`. Pure index
  arithmetic on absolute positions, so they hold under a KV cache.
- `create_causal_mask` returns the mask in the format of the config's attention implementation (a boolean tensor
  for sdpa, an additive float tensor for eager, a `BlockMask` for flex). A text model that accepts a mapping of
  masks per layer type (Qwen2-VL, Qwen2.5-VL) gets `{"full_attention": mask, ...}`; one that builds its own causal
  mask from whatever it is given (Qwen3-VL) gets the 4-D mask itself, which `create_causal_mask` passes through
  unchanged. Never a boolean mask under eager: eager *adds* the mask to the scores, so a boolean one masks nothing
  (docs/pitfalls.md, "Attention masks").

This file is copied next to saved checkpoints with the modeling code (remote code): it imports only torch and
transformers.
"""

from collections.abc import Callable

import torch
from transformers.cache_utils import Cache
from transformers.configuration_utils import PreTrainedConfig
from transformers.masking_utils import and_masks, create_causal_mask, create_sliding_window_causal_mask


def bottleneck_mask_function(
    is_image: torch.Tensor, is_latent: torch.Tensor, first_latent: torch.Tensor, block_prompt: bool
) -> Callable:
    """The stage-1 rule as a mask function for `create_causal_mask(..., and_mask_function=)`.

    A query `q` may attend to a key `kv` of sample `b` when

        NOT image[b, kv] OR image[b, q] OR latent[b, q] OR (NOT block_prompt AND q < first_latent[b])

    so the answer (everything after the latent tokens) never sees the image, the text between the image and the
    latent tokens sees it only without `block_prompt`, and the latent tokens always do. Causality and padding are
    ANDed in by `create_causal_mask`. A key index past the tokens (a static cache's empty slots) is read at the last
    token: causality masks those keys anyway.
    """
    last = is_image.shape[1] - 1

    def inner_mask(batch_idx, head_idx, q_idx, kv_idx):
        kv_idx = kv_idx.clamp(max=last)
        allowed = ~is_image[batch_idx, kv_idx] | is_image[batch_idx, q_idx] | is_latent[batch_idx, q_idx]
        if not block_prompt:
            allowed = allowed | (q_idx < first_latent[batch_idx])
        return allowed

    return inner_mask


def latent_key_mask_function(is_latent: torch.Tensor) -> Callable:
    """The `mask_latent` diagnostic: `NOT latent[b, kv] OR q == kv`, no later position attends to a latent token (key
    indices past the tokens are read as in `bottleneck_mask_function`)."""
    last = is_latent.shape[1] - 1

    def inner_mask(batch_idx, head_idx, q_idx, kv_idx):
        return ~is_latent[batch_idx, kv_idx.clamp(max=last)] | (q_idx == kv_idx)

    return inner_mask


def lavit_mask_function(
    token_ids: torch.LongTensor,
    image_token_id: int,
    latent_ids: torch.LongTensor,
    training_stage: int,
    block_prompt: bool,
    mask_latent: bool = False,
) -> Callable | None:
    """The mask function that the stage and switches call for, or `None` for plain causal attention.

    Args:
        token_ids (`torch.LongTensor` of shape `(batch_size, total_length)`):
            The token ids of the whole sequence so far (under a KV cache, the cached ones included).
        image_token_id (`int`): the id of the image placeholder token.
        latent_ids (`torch.LongTensor` of shape `(K,)`): the latent token ids.
        training_stage (`int`): 1 applies the bottleneck.
        block_prompt (`bool`): see `bottleneck_mask_function`.
        mask_latent (`bool`, *optional*, defaults to `False`): whether no later position may attend to the latent
            tokens.
    """
    functions = []
    is_latent = torch.isin(token_ids, latent_ids)
    if training_stage == 1:
        is_image = token_ids == image_token_id
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        first_latent = torch.where(is_latent, positions, token_ids.shape[1]).amin(dim=1)
        functions.append(bottleneck_mask_function(is_image, is_latent, first_latent, block_prompt))
    if mask_latent:
        functions.append(latent_key_mask_function(is_latent))
    if not functions:
        return None
    return functions[0] if len(functions) == 1 else and_masks(*functions)


def text_attention_masks(
    text_config: PreTrainedConfig,
    batch_size: int,
    query_length: int,
    dtype: torch.dtype,
    device: torch.device,
    attention_mask: torch.Tensor | None,
    past_key_values: Cache | None,
    mask_function: Callable,
    as_mapping: bool,
) -> dict[str, torch.Tensor] | torch.Tensor:
    """The masks that impose `mask_function` (with causality and padding) on a text model, in its attention
    implementation's own format.

    Args:
        text_config (`PreTrainedConfig`): the text model's config; its `_attn_implementation` picks the format.
        batch_size (`int`), query_length (`int`): the shape of this forward's queries (uncached tokens only).
        dtype (`torch.dtype`): the dtype of the input embeddings (the additive eager mask uses its minimum).
        device (`torch.device`): where the mask lives.
        attention_mask (`torch.Tensor` of shape `(batch_size, total_length)`, *optional*): the 2-D padding mask.
        past_key_values (`Cache`, *optional*): the KV cache, which sizes the keys.
        mask_function (`Callable`): the LaViT rule (`lavit_mask_function`).
        as_mapping (`bool`): return `{"full_attention": ..., "sliding_attention": ...}` for a text model that takes a
            mapping of masks per layer type; otherwise the full-attention mask itself, for a text model that builds
            its own causal mask and passes a prepared 4-D one through (it must have no sliding-window layers).
    """
    # `create_causal_mask` reads only the batch size, length, dtype and device of `inputs_embeds`.
    shape_reference = torch.empty((batch_size, query_length, 0), dtype=dtype, device=device)
    mask_kwargs = {
        "config": text_config,
        "inputs_embeds": shape_reference,
        "attention_mask": attention_mask,
        "past_key_values": past_key_values,
        "and_mask_function": mask_function,
    }
    full = create_causal_mask(**mask_kwargs)
    has_sliding = "sliding_attention" in (getattr(text_config, "layer_types", None) or [])
    if not as_mapping:
        if has_sliding:
            raise ValueError("This text model takes one prepared mask, so its layers cannot use sliding windows.")
        return full
    masks = {"full_attention": full}
    if has_sliding:
        masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
    return masks


def is_prepared_mask(attention_mask) -> bool:
    """Whether `attention_mask` is already a prepared mask (a mapping per layer type, or 4-D), not a padding mask."""
    return isinstance(attention_mask, dict) or (attention_mask is not None and len(attention_mask.shape) == 4)


__all__ = [
    "bottleneck_mask_function",
    "is_prepared_mask",
    "latent_key_mask_function",
    "lavit_mask_function",
    "text_attention_masks",
]
