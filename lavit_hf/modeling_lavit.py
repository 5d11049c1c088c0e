"""LaViT (arXiv 2601.10129) on Qwen2.5-VL: the family binding of the LaViT core (`modeling_lavit_core.py`).

Model type `lavit`: the paper's student family keeps the plain name.

This file is copied next to saved checkpoints (remote code): it imports only torch, transformers and its siblings.
"""

from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLModel

from .configuration_lavit import LaViTConfig
from .modeling_lavit_core import (
    LaViTCausalLMOutputWithPast,
    LaViTForConditionalGenerationMixin,
    LaViTModelMixin,
    add_latent_tokens,
    register_base_conversions,
)


class LaViTModel(LaViTModelMixin, Qwen2_5_VLModel):
    config: LaViTConfig


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
