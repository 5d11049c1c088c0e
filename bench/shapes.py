"""Real Qwen2.5-VL shapes (random weights) for the GPU benchmarks, and the tiny shape for CPU smoke runs."""

from lavit_hf.tiny import tiny_qwen2_5_vl_config


def _vision(out_hidden_size: int, intermediate_size: int = 3420) -> dict:
    return {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": intermediate_size,
        "num_heads": 16,
        "out_hidden_size": out_hidden_size,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "window_size": 112,
        "tokens_per_second": 2,
    }


def _text(hidden, layers, heads, kv_heads, intermediate, vocab, tie) -> dict:
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 128000,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": tie,
        "rms_norm_eps": 1e-6,
    }


# Qwen2.5-VL-3B-Instruct, -7B-Instruct and -32B-Instruct as published (config.json of each checkpoint; the 32B vision
# tower is the 7B's with a wider MLP, 3456).
SHAPES = {
    "3b": {
        "text_config": _text(2048, 36, 16, 2, 11008, 151936, True),
        "vision_config": _vision(2048),
        "tie_word_embeddings": True,
    },
    "7b": {"text_config": _text(3584, 28, 28, 4, 18944, 152064, False), "vision_config": _vision(3584)},
    "32b": {"text_config": _text(5120, 64, 40, 8, 27648, 152064, False), "vision_config": _vision(5120, 3456)},
}


def shape_config(shape: str, vocab_size: int) -> dict:
    """Keyword arguments of a `Qwen2_5_VLConfig` (or `LaViTConfig`) at `shape`: `tiny` or one of `SHAPES`."""
    if shape == "tiny":
        return tiny_qwen2_5_vl_config(vocab_size)
    if shape not in SHAPES:
        raise ValueError(f"Unknown shape {shape!r}: expected tiny or one of {list(SHAPES)}.")
    return SHAPES[shape]
