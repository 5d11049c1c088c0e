"""LaViT (arXiv 2601.10129) on Qwen3-VL (dense): the family binding of the LaViT core (`modeling_lavit_core.py`).

Qwen3-VL's text model builds its own causal mask and takes no mapping of masks per layer type, so the stage-1 and
`mask_latent` rules reach it as one prepared 4-D mask in its attention implementation's own format (`masks.py`), which
its `create_causal_mask` passes through unchanged.

This file is copied next to saved checkpoints (remote code): it imports only torch, transformers and its siblings.
"""

from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLForConditionalGeneration, Qwen3VLModel

from .configuration_lavit_qwen3_vl import LaViTQwen3VLConfig
from .modeling_lavit_core import LaViTForConditionalGenerationMixin, LaViTModelMixin, register_base_conversions


class LaViTQwen3VLModel(LaViTModelMixin, Qwen3VLModel):
    config: LaViTQwen3VLConfig
    text_model_accepts_mask_mapping = False


class LaViTQwen3VLForConditionalGeneration(LaViTForConditionalGenerationMixin, Qwen3VLForConditionalGeneration):
    config: LaViTQwen3VLConfig
    lavit_model_class = LaViTQwen3VLModel


register_base_conversions(
    {
        "LaViTQwen3VLModel": Qwen3VLModel,
        "LaViTQwen3VLForConditionalGeneration": Qwen3VLForConditionalGeneration,
    }
)

__all__ = ["LaViTQwen3VLForConditionalGeneration", "LaViTQwen3VLModel"]
