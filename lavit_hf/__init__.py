"""lavit-hf: LaViT (arXiv 2601.10129) students on Qwen2.5-VL, native to transformers, datasets and the Hub.

Importing this package registers `LaViTConfig` and `LaViTForConditionalGeneration` with the Auto classes, so
checkpoints load without remote code; `save_pretrained` also writes the modeling code (`auto_map`), so they load with
`trust_remote_code=True` where this package is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .configuration_lavit import LaViTConfig
from .layout import latent_token_strings
from .modeling_lavit import (
    LaViTCausalLMOutputWithPast,
    LaViTForConditionalGeneration,
    LaViTModel,
    add_latent_tokens,
)
from .processing import QWEN2_5_VL_CHAT_TEMPLATE, build_qwen2_5_vl_processor, bundled_qwen_tokenizer_dir
from .tiny import build_tiny_lavit, build_tiny_qwen2_5_vl


AutoConfig.register(LaViTConfig.model_type, LaViTConfig, exist_ok=True)
AutoModel.register(LaViTConfig, LaViTModel, exist_ok=True)
AutoModelForImageTextToText.register(LaViTConfig, LaViTForConditionalGeneration, exist_ok=True)
LaViTConfig.register_for_auto_class()
LaViTModel.register_for_auto_class("AutoModel")
LaViTForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__version__ = "0.1.0"

__all__ = [
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "LaViTCausalLMOutputWithPast",
    "LaViTConfig",
    "LaViTForConditionalGeneration",
    "LaViTModel",
    "add_latent_tokens",
    "build_qwen2_5_vl_processor",
    "build_tiny_lavit",
    "build_tiny_qwen2_5_vl",
    "bundled_qwen_tokenizer_dir",
    "latent_token_strings",
]
