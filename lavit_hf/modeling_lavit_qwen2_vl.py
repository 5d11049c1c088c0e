"""LaViT (arXiv 2601.10129) on Qwen2-VL: the family binding of the LaViT core (`modeling_lavit_core.py`).

This file is copied next to saved checkpoints (remote code): it imports only torch, transformers and its siblings.
"""

import torch
from transformers import PreTrainedConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLForConditionalGeneration, Qwen2VLModel
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids

from .configuration_lavit_qwen2_vl import LaViTQwen2VLConfig
from .modeling_lavit_core import LaViTForConditionalGenerationMixin, LaViTModelMixin, register_base_conversions


def qwen2_vl_vision_inputs(vision_config: PreTrainedConfig, grid_thw: torch.Tensor) -> dict:
    """What Qwen2-VL's vision tower derives from `grid_thw` before its first block, under the names it accepts
    precomputed: rotary positions and image segments with the longest length. From the tower's config alone, so that
    a data collator can derive them in its worker processes."""
    cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid_thw, vision_config)
    return {
        "position_ids": get_vision_position_ids(grid_thw, vision_config.spatial_merge_size),
        "cu_seqlens": cu_seqlens,
        "max_seqlen": max_seqlen,
    }


class LaViTQwen2VLModel(LaViTModelMixin, Qwen2VLModel):
    config: LaViTQwen2VLConfig
    host_vision_inputs = staticmethod(qwen2_vl_vision_inputs)


class LaViTQwen2VLForConditionalGeneration(LaViTForConditionalGenerationMixin, Qwen2VLForConditionalGeneration):
    config: LaViTQwen2VLConfig
    lavit_model_class = LaViTQwen2VLModel


register_base_conversions(
    {
        "LaViTQwen2VLModel": Qwen2VLModel,
        "LaViTQwen2VLForConditionalGeneration": Qwen2VLForConditionalGeneration,
    }
)

__all__ = ["LaViTQwen2VLForConditionalGeneration", "LaViTQwen2VLModel"]
