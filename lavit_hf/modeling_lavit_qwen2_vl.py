"""LaViT (arXiv 2601.10129) on Qwen2-VL: the family binding of the LaViT core (`modeling_lavit_core.py`).

This file is copied next to saved checkpoints (remote code): it imports only torch, transformers and its siblings.
"""

from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLForConditionalGeneration, Qwen2VLModel

from .configuration_lavit_qwen2_vl import LaViTQwen2VLConfig
from .modeling_lavit_core import LaViTForConditionalGenerationMixin, LaViTModelMixin, register_base_conversions


class LaViTQwen2VLModel(LaViTModelMixin, Qwen2VLModel):
    config: LaViTQwen2VLConfig


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
