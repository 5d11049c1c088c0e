"""What follows the latent tokens decides which position predicts the answer's first token, and so whether the
stage-1 bottleneck with `mask_latent` (the answer then gets nothing from the image) reaches it (docs/method.md
section 2)."""

import torch
from PIL import Image

from lavit_hf import build_tiny_lavit
from lavit_hf.layout import training_messages


def answer_logits(model, processor, colour: str) -> torch.Tensor:
    """Stage-1 logits under `mask_latent`, from the last latent token's position to the end of the turn (position t
    predicts token t + 1)."""
    config = model.config
    messages = training_messages("What colour is the marked shape?", "red", config.num_latent_tokens,
                                 config.latent_separator)  # fmt: skip
    text = processor.apply_chat_template(messages, tokenize=False)
    inputs = processor(text=[text], images=[Image.new("RGB", (56, 56), colour)], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    last_latent = max(i for i, token in enumerate(ids) if token in config.latent_token_ids)
    end = max(i for i, token in enumerate(ids) if token == processor.tokenizer.convert_tokens_to_ids("<|im_end|>"))
    model.set_training_stage(1)
    with torch.no_grad():
        logits = model(**inputs, mask_latent=True).logits[0]
    return logits[last_latent:end]


def test_with_a_newline_every_answer_token_is_predicted_past_the_latent_tokens():
    model, processor = build_tiny_lavit(seed=0, latent_separator="\n")
    red, blue = (answer_logits(model, processor, colour) for colour in ("red", "blue"))
    # The last latent token predicts the newline and sees the image; every answer token comes after it and, with the
    # latent tokens masked under the bottleneck, gets nothing from the image.
    assert not torch.equal(red[0], blue[0])
    assert torch.equal(red[1:], blue[1:])


def test_with_the_papers_space_the_last_latent_token_predicts_the_first_answer_token():
    model, processor = build_tiny_lavit(seed=0)
    assert model.config.latent_separator == " "
    red, blue = (answer_logits(model, processor, colour) for colour in ("red", "blue"))
    # " red" is one token, predicted at the last latent token, which sees the image under every rule: neither the
    # bottleneck nor the mask reaches the answer's first token.
    assert not torch.equal(red[0], blue[0])
    assert torch.equal(red[1:], blue[1:])
