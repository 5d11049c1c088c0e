"""LaViT (arXiv 2601.10129) on Qwen2.5-VL: the family binding of the LaViT core (`modeling_lavit_core.py`).

Model type `lavit`: the paper's student family keeps the plain name.

This file is copied next to saved checkpoints (remote code): it imports only torch, transformers and its siblings.
"""

import torch
from transformers import PreTrainedConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel
from transformers.utils.generic import get_max_seqlen
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index

from .configuration_lavit import LaViTConfig
from .modeling_lavit_core import (
    LaViTCausalLMOutputWithPast,
    LaViTForConditionalGenerationMixin,
    LaViTModelMixin,
    add_latent_tokens,
    register_base_conversions,
)


def qwen2_5_vl_vision_inputs(vision_config: PreTrainedConfig, grid_thw: torch.Tensor) -> dict:
    """What Qwen2.5-VL's vision tower derives from `grid_thw` before its first block, under the names it accepts
    precomputed: rotary positions, image segments and windows, with their longest lengths. From the tower's config
    alone, so that a data collator can derive them in its worker processes."""
    merge_size = vision_config.spatial_merge_size
    cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid_thw, vision_config)
    window_index, cu_window_seqlens = get_vision_window_index(
        grid_thw, merge_size, vision_config.window_size, vision_config.patch_size
    )
    return {
        "position_ids": get_vision_position_ids(grid_thw, merge_size),
        "cu_seqlens": cu_seqlens,
        "max_seqlen": max_seqlen,
        "window_index": window_index,
        "cu_window_seqlens": cu_window_seqlens,
        "max_window_seqlen": get_max_seqlen(cu_window_seqlens, vision_config),
    }


class LaViTModel(LaViTModelMixin, Qwen2_5_VLModel):
    config: LaViTConfig
    host_vision_inputs = staticmethod(qwen2_5_vl_vision_inputs)


class LaViTForConditionalGeneration(LaViTForConditionalGenerationMixin, Qwen2_5_VLForConditionalGeneration):
    config: LaViTConfig
    lavit_model_class = LaViTModel


register_base_conversions(
    {
        "LaViTModel": Qwen2_5_VLModel,
        "LaViTForConditionalGeneration": Qwen2_5_VLForConditionalGeneration,
    }
)

__all__ = [
    "LaViTCausalLMOutputWithPast",
    "LaViTForConditionalGeneration",
    "LaViTModel",
    "add_latent_tokens",
]
