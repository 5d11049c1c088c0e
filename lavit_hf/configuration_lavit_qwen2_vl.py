"""LaViT configuration on Qwen2-VL: Qwen2-VL plus the LaViT fields (`LaViTConfigMixin`).

This file is copied next to saved checkpoints (remote code): it imports only `huggingface_hub`, `transformers` and its
sibling.
"""

from huggingface_hub.dataclasses import strict
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig

from .configuration_lavit_core import LaViTConfigMixin


@strict
class LaViTQwen2VLConfig(LaViTConfigMixin, Qwen2VLConfig):
    r"""
    Configuration of a LaViT student on Qwen2-VL (arXiv 2601.10129). Only the fields that Qwen2-VL lacks are listed
    (see `LaViTConfigMixin`); the defaults reproduce the paper.
    """

    model_type = "lavit_qwen2_vl"
    base_model_type = "qwen2_vl"


__all__ = ["LaViTQwen2VLConfig"]
