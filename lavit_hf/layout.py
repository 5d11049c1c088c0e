"""The LaViT sample layout, in one place: what the teacher, the collator, the evaluation runner and the demo render.

A LaViT conversation is one user turn holding the image(s) and then the question, and one assistant turn made of the
K latent tokens `<lvr1>` ... `<lvrK>`, a space and the answer (docs/method.md section 2). The teacher and the
evaluation runner render the user turn with the generation prompt; the collator renders both turns. The processor's
pixel limits decide the image grid, so training, extraction and evaluation read and write them here, and the merged
token grid of each image comes from `image_grid_thw` (never guessed from a token count).

User text never contributes special tokens: a question or answer holding one (a literal `<lvr1>`, `<|image_pad|>`,
`<|im_end|>` ...) would move the layout's landmarks (the stage-1 rule would let the question see the image, labels
would start inside the question), so `check_text` refuses it, naming the row.

This file is copied next to saved checkpoints with the modeling code (remote code): it imports only torch.
"""

from collections.abc import Sequence
from typing import Any

import torch


def latent_token_strings(num_latent_tokens: int) -> list[str]:
    """The latent token strings `<lvr1>` ... `<lvrK>`.

    Example:

    ```python
    >>> latent_token_strings(3)
    ['<lvr1>', '<lvr2>', '<lvr3>']

    ```
    """
    return [f"<lvr{i}>" for i in range(1, num_latent_tokens + 1)]


def latent_prefix(num_latent_tokens: int) -> str:
    """`<lvr1>...<lvrK>`, the start of every assistant turn."""
    return "".join(latent_token_strings(num_latent_tokens))


def user_turn(question: str, num_images: int = 1) -> dict[str, Any]:
    """The user turn: `num_images` images, then the question."""
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": question}]
    return {"role": "user", "content": content}


def assistant_turn(answer: str, num_latent_tokens: int, separator: str = " ") -> dict[str, Any]:
    """The assistant turn of a training sample: the K latent tokens, the separator (the paper's space, or the
    config's `latent_separator`) and the answer."""
    return {"role": "assistant", "content": f"{latent_prefix(num_latent_tokens)}{separator}{answer}"}


def prompt_messages(question: str, num_images: int = 1) -> list[dict[str, Any]]:
    """The chat of a prompt (teacher generation, evaluation): the user turn alone; render it with the generation
    prompt."""
    return [user_turn(question, num_images)]


def training_messages(
    question: str, answer: str, num_latent_tokens: int, separator: str = " "
) -> list[dict[str, Any]]:
    """The chat of one training sample: the image and the question, then the latent tokens, the separator and the
    answer."""
    return [user_turn(question), assistant_turn(answer, num_latent_tokens, separator)]


def render_prompt(processor, question: str, num_images: int = 1) -> str:
    """The prompt text of `question` with `num_images` images, ending with the assistant header."""
    return processor.apply_chat_template(prompt_messages(question, num_images), add_generation_prompt=True)


def reserved_tokens(tokenizer) -> list[str]:
    """The special tokens of `tokenizer` (the chat, vision and latent tokens among them) that user text must not hold,
    longest first."""
    tokens = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    tokens.update(tokenizer.all_special_tokens)
    return sorted((token for token in tokens if token), key=len, reverse=True)


def check_text(text: str, tokenizer, where: str, field: str = "question", reserved: Sequence[str] | None = None) -> None:
    """Refuse user text holding a special token of `tokenizer` (it would move the layout's landmarks).

    Args:
        text (`str`): the question or answer.
        tokenizer: the tokenizer that will encode it.
        where (`str`): names the row in the error (for example `"row 'vcot-12'"`).
        field (`str`, *optional*, defaults to `"question"`): which field `text` is.
        reserved (`Sequence[str]`, *optional*): `reserved_tokens(tokenizer)`, when the caller has it already.

    Raises:
        `ValueError`: naming the row, the field and the token.
    """
    for token in reserved if reserved is not None else reserved_tokens(tokenizer):
        if token in text:
            raise ValueError(
                f"{where}: the {field} holds the special token {token!r}, which the LaViT layout reserves (it would "
                "let text see what the stage-1 rule hides, or move where the labels start); remove it from the source."
            )


def pixel_limits(processor) -> tuple[int, int]:
    """The `(min_pixels, max_pixels)` image-area limits the processor resizes images to; a processor that resizes every
    image to one `height x width` (Gemma 3) gives that one area twice."""
    size = processor.image_processor.size
    if size.get("shortest_edge") is None and size.get("height") is not None:
        area = int(size["height"]) * int(size["width"])
        return area, area
    return int(size["shortest_edge"]), int(size["longest_edge"])


def set_pixel_limits(processor, min_pixels: int, max_pixels: int) -> None:
    """Give the processor's image processor these limits, so that the saved processor (and everything that later
    loads it) resizes images exactly as this run does (docs/method.md section 4: same limits everywhere)."""
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"Need 0 < min_pixels <= max_pixels, got {min_pixels} and {max_pixels}.")
    image_processor = processor.image_processor
    image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if hasattr(image_processor, name):
            setattr(image_processor, name, value)


def merged_grids(image_grid_thw: torch.Tensor, merge_size: int) -> list[tuple[int, int]]:
    """Each image's merged token grid `(h, w)` from `image_grid_thw` (rows `(t, h, w)` in patches).

    Example:

    ```python
    >>> import torch
    >>> merged_grids(torch.tensor([[1, 8, 6]]), 2)
    [(4, 3)]

    ```
    """
    return [(int(h) // merge_size, int(w) // merge_size) for _, h, w in image_grid_thw.tolist()]


__all__ = [
    "assistant_turn",
    "check_text",
    "latent_prefix",
    "latent_token_strings",
    "merged_grids",
    "pixel_limits",
    "prompt_messages",
    "render_prompt",
    "reserved_tokens",
    "set_pixel_limits",
    "training_messages",
    "user_turn",
]
