"""LaViT configuration on Qwen3-VL (dense): Qwen3-VL plus the LaViT fields (`LaViTConfigMixin`).

This file is copied next to saved checkpoints (remote code): it imports only `huggingface_hub`, `transformers` and its
sibling.
"""

from huggingface_hub.dataclasses import strict
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig

from .configuration_lavit_core import LaViTConfigMixin


@strict
class LaViTQwen3VLConfig(LaViTConfigMixin, Qwen3VLConfig):
    r"""
    Configuration of a LaViT student on Qwen3-VL (dense; arXiv 2601.10129). Only the fields that Qwen3-VL lacks are
    listed (see `LaViTConfigMixin`); the defaults reproduce the paper.
    """

    model_type = "lavit_qwen3_vl"
    base_model_type = "qwen3_vl"


__all__ = ["LaViTQwen3VLConfig"]
