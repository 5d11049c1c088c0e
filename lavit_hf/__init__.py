"""lavit-hf: LaViT (arXiv 2601.10129) students on Qwen2-VL, Qwen2.5-VL and Qwen3-VL, native to transformers, datasets
and the Hub.

Importing this package registers every student family's configuration and models with the Auto classes, so
checkpoints load without remote code; `save_pretrained` also writes the modeling code (`auto_map`), so they load with
`trust_remote_code=True` where this package is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .configuration_lavit import LaViTConfig
from .configuration_lavit_qwen2_vl import LaViTQwen2VLConfig
from .configuration_lavit_qwen3_vl import LaViTQwen3VLConfig
from .families import STUDENT_FAMILIES, lavit_from_base, student_family
from .layout import latent_token_strings
from .modeling_lavit import LaViTCausalLMOutputWithPast, LaViTForConditionalGeneration, LaViTModel, add_latent_tokens
from .modeling_lavit_qwen2_vl import LaViTQwen2VLForConditionalGeneration, LaViTQwen2VLModel
from .modeling_lavit_qwen3_vl import LaViTQwen3VLForConditionalGeneration, LaViTQwen3VLModel
from .processing import QWEN2_5_VL_CHAT_TEMPLATE, build_qwen2_5_vl_processor, bundled_qwen_tokenizer_dir
from .tiny import build_tiny_base, build_tiny_lavit, build_tiny_qwen2_5_vl


for _family in STUDENT_FAMILIES.values():
    AutoConfig.register(_family.model_type, _family.config_class, exist_ok=True)
    AutoModel.register(_family.config_class, _family.model_class, exist_ok=True)
    AutoModelForImageTextToText.register(_family.config_class, _family.for_generation_class, exist_ok=True)
    _family.config_class.register_for_auto_class()
    _family.model_class.register_for_auto_class("AutoModel")
    _family.for_generation_class.register_for_auto_class("AutoModelForImageTextToText")

__version__ = "0.1.0"

__all__ = [
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "STUDENT_FAMILIES",
    "LaViTCausalLMOutputWithPast",
    "LaViTConfig",
    "LaViTForConditionalGeneration",
    "LaViTModel",
    "LaViTQwen2VLConfig",
    "LaViTQwen2VLForConditionalGeneration",
    "LaViTQwen2VLModel",
    "LaViTQwen3VLConfig",
    "LaViTQwen3VLForConditionalGeneration",
    "LaViTQwen3VLModel",
    "add_latent_tokens",
    "build_qwen2_5_vl_processor",
    "build_tiny_base",
    "build_tiny_lavit",
    "build_tiny_qwen2_5_vl",
    "bundled_qwen_tokenizer_dir",
    "latent_token_strings",
    "lavit_from_base",
    "student_family",
]
