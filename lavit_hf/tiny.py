"""Tiny random Qwen2.5-VL teachers and LaViT students, built offline, for tests, the demo and smoke tests."""

import logging
from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from .processing import build_qwen2_5_vl_processor


logger = logging.getLogger(__name__)

# Images of 56x56 to 224x224 pixels: 4 to 64 merged image tokens, enough for a trajectory and fast on a CPU.
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 224 * 224


def tiny_qwen2_5_vl_config(
    vocab_size: int, hidden_size: int = 64, num_hidden_layers: int = 2, **overrides
) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config with the real token ids and geometry (patch 14, temporal patch 2, 2x2 merge) and tiny
    widths. `overrides` set top-level config fields (`teacher_hidden_size` and other LaViT fields included when the
    result is passed to `LaViTConfig`)."""
    num_heads = 4
    head_dim = hidden_size // num_heads
    # Multimodal RoPE splits each head's rotary half into (temporal, height, width) sections.
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope_section},
        "tie_word_embeddings": False,
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": hidden_size,
        "fullatt_block_indexes": [1],
        "window_size": 56,
    }
    return dict(text_config=text_config, vision_config=vision_config, **overrides)


def build_tiny_qwen2_5_vl(
    seed: int = 0,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
    attn_implementation: str = "sdpa",
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """A tiny random Qwen2.5-VL (a teacher, or the base of a student) with the real Qwen tokenizer and processor.

    Args:
        seed (`int`, *optional*, defaults to 0): seeds the random weights.
        hidden_size (`int`, *optional*, defaults to 64): width of the language model.
        num_hidden_layers (`int`, *optional*, defaults to 2): depth of the language model.
        min_pixels (`int`, *optional*, defaults to 3,136): the processor's smallest image area.
        max_pixels (`int`, *optional*, defaults to 50,176): the processor's largest image area.
        attn_implementation (`str`, *optional*, defaults to `"sdpa"`): the attention backend.
    """
    processor = build_qwen2_5_vl_processor(min_pixels=min_pixels, max_pixels=max_pixels)
    config = Qwen2_5_VLConfig(**tiny_qwen2_5_vl_config(len(processor.tokenizer), hidden_size, num_hidden_layers))
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return model, processor


def build_tiny_lavit(
    seed: int = 0,
    num_latent_tokens: int = 4,
    teacher_hidden_size: int = 48,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    min_pixels: int = TINY_MIN_PIXELS,
    max_pixels: int = TINY_MAX_PIXELS,
    attn_implementation: str = "sdpa",
    **config_overrides,
):
    """A tiny random LaViT student and its processor (latent tokens added), through the same conversion a user runs
    on a real Qwen2.5-VL checkpoint (`LaViTForConditionalGeneration.from_qwen2_5_vl`).

    Args:
        seed (`int`, *optional*, defaults to 0): seeds the random weights.
        num_latent_tokens (`int`, *optional*, defaults to 4): K.
        teacher_hidden_size (`int`, *optional*, defaults to 48): the V_top head's output width.
        hidden_size, num_hidden_layers, min_pixels, max_pixels, attn_implementation: as in `build_tiny_qwen2_5_vl`.
        config_overrides: further `LaViTConfig` fields (stage, loss weights, ...).

    Example:

    ```python
    >>> from lavit_hf import build_tiny_lavit
    >>> model, processor = build_tiny_lavit(seed=0)
    >>> processor.tokenizer.convert_ids_to_tokens(model.config.latent_token_ids)
    ['<lvr1>', '<lvr2>', '<lvr3>', '<lvr4>']
    ```
    """
    from .modeling_lavit import LaViTForConditionalGeneration

    base, processor = build_tiny_qwen2_5_vl(
        seed, hidden_size, num_hidden_layers, min_pixels, max_pixels, attn_implementation
    )
    return LaViTForConditionalGeneration.from_qwen2_5_vl(
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


def save_tiny(kind: str, out: str | Path, seed: int = 0) -> Path:
    """Save a tiny random `student` (LaViT) or `teacher` (plain Qwen2.5-VL) with its processor to `out`."""
    if kind == "student":
        model, processor = build_tiny_lavit(seed=seed)
    elif kind == "teacher":
        model, processor = build_tiny_qwen2_5_vl(seed=seed)
    else:
        raise ValueError(f"Unknown kind {kind!r}: expected 'student' or 'teacher'.")
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.info("Saved a tiny %s to %s", kind, out)
    return out


__all__ = [
    "TINY_MAX_PIXELS",
    "TINY_MIN_PIXELS",
    "build_tiny_lavit",
    "build_tiny_qwen2_5_vl",
    "calibrate_image_features",
    "save_tiny",
]
