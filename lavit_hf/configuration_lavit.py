"""LaViT configuration on Qwen2.5-VL: Qwen2.5-VL plus the latent tokens, the two distillation heads and the stage
schedule (`LaViTConfigMixin`).

This file is copied next to saved checkpoints (remote code): it imports only `huggingface_hub`, `transformers` and its
sibling.
"""

from huggingface_hub.dataclasses import strict
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig

from .configuration_lavit_core import LaViTConfigMixin


@strict
class LaViTConfig(LaViTConfigMixin, Qwen2_5_VLConfig):
    r"""
    Configuration of a LaViT student on Qwen2.5-VL (arXiv 2601.10129). Only the fields that Qwen2.5-VL lacks are
    listed (see `LaViTConfigMixin`); the defaults reproduce the paper.
    """

    model_type = "lavit"
    base_model_type = "qwen2_5_vl"


__all__ = ["LaViTConfig"]
