"""Where a batch's image and latent tokens are, checked sample by sample with ONE host sync for the whole batch.

This file is copied next to saved checkpoints with the modeling code (remote code): it imports only torch.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass
class TokenLayout:
    """Where a batch's image and latent tokens are (`locate_tokens`).

    Attributes:
        image_positions (`torch.LongTensor` of shape `(batch_size, max_image_tokens)`): each sample's image-token
            positions in sequence order, padded.
        image_valid (`torch.BoolTensor` of shape `(batch_size, max_image_tokens)`): which entries are real.
        image_counts (`list[int]`): image tokens per sample.
        latent_positions (`torch.LongTensor` of shape `(batch_size, K)`, *optional*): positions of `<lvr1>` ...
            `<lvrK>` (when asked for).
        num_labelled (`int`, *optional*): labelled next-token targets in the batch (when labels were given).
    """

    image_positions: torch.Tensor
    image_valid: torch.Tensor
    image_counts: list[int]
    latent_positions: torch.Tensor | None = None
    num_labelled: int | None = None


def locate_tokens(
    input_ids: torch.LongTensor,
    image_token_id: int,
    merge_size: int,
    image_grid_thw: torch.LongTensor | None = None,
    latent_ids: Sequence[int] | None = None,
    labels: torch.LongTensor | None = None,
    trajectory_mask: torch.Tensor | None = None,
    sample_problems: Mapping[str, torch.Tensor] | None = None,
) -> TokenLayout:
    """Locate the image tokens (and the latent tokens when `latent_ids` are given) and check every sample, with ONE
    host sync for the whole batch: all the counts and flags the checks need travel to the host together.

    Checks, each a `ValueError` naming the sample: its image-token count equals the tokens its images have by
    `image_grid_thw` (`t*h*w / merge_size**2` each, images taken in order); with `latent_ids`, it holds each latent
    token exactly once; with `trajectory_mask`, the target has one entry per image token; no flag of
    `sample_problems` is set for it.

    Args:
        input_ids (`torch.LongTensor` of shape `(batch_size, seq_len)`): the token ids.
        image_token_id (`int`): the image placeholder token.
        merge_size (`int`): the vision tower's spatial merge size (2 for the Qwen-VL families).
        image_grid_thw (`torch.LongTensor` of shape `(num_images, 3)`, *optional*): each image's patch grid.
        latent_ids (`Sequence[int]`, *optional*): the K latent token ids, when their positions are needed.
        labels (`torch.LongTensor` of shape `(batch_size, seq_len)`, *optional*): counts the labelled targets.
        trajectory_mask (`torch.BoolTensor` of shape `(batch_size, n)`, *optional*): valid trajectory entries.
        sample_problems (`Mapping[str, torch.Tensor]`, *optional*): a description of a problem mapped to a
            `(batch_size,)` boolean tensor, True for the samples that have it.
    """
    is_image = input_ids == image_token_id
    counts = is_image.sum(dim=1)
    pieces = {"image_counts": counts}
    if image_grid_thw is not None:
        pieces["per_image"] = image_grid_thw.prod(dim=-1) // merge_size**2
    if latent_ids is not None:
        if not latent_ids:
            raise ValueError(
                "config.latent_token_ids is unset: add the latent tokens first (lavit_hf.lavit_from_base)."
            )
        hits = input_ids.unsqueeze(-1) == torch.as_tensor(latent_ids, device=input_ids.device)  # (batch, seq, K)
        pieces["latent_counts"] = hits.sum(dim=1).flatten()
    if trajectory_mask is not None:
        pieces["target_counts"] = trajectory_mask.sum(dim=-1).flatten()
    if labels is not None:
        pieces["num_labelled"] = (labels[:, 1:] != -100).sum().reshape(1)
    for index, flags in enumerate((sample_problems or {}).values()):
        pieces[f"problem_{index}"] = flags.flatten()
    flat = torch.cat([piece.to(device=input_ids.device, dtype=torch.long) for piece in pieces.values()]).tolist()
    host, offset = {}, 0
    for name, piece in pieces.items():
        host[name], offset = flat[offset : offset + piece.numel()], offset + piece.numel()

    image_counts, per_image = host["image_counts"], host.get("per_image", [])
    image_index = 0
    for sample, count in enumerate(image_counts):
        expected = 0
        while expected < count and image_index < len(per_image):
            expected += per_image[image_index]
            image_index += 1
        if expected != count:
            raise ValueError(
                f"Sample {sample}: {count} image tokens in input_ids but image_grid_thw gives {expected} for its "
                f"images (t*h*w/{merge_size**2} each); the trajectory needs one image token per merged patch."
            )
    if image_index != len(per_image):
        raise ValueError(f"image_grid_thw has {len(per_image)} images but input_ids hold {image_index}.")
    latent_positions = None
    if latent_ids is not None:
        k = len(latent_ids)
        for sample in range(input_ids.shape[0]):
            found = host["latent_counts"][sample * k : (sample + 1) * k]
            if any(count != 1 for count in found):
                raise ValueError(
                    f"Sample {sample}: expected each latent token {list(latent_ids)} exactly once in input_ids when "
                    f"teacher targets are given, found counts {found}."
                )
        latent_positions = hits.to(torch.int8).argmax(dim=1)
    if trajectory_mask is not None:
        for sample, (have, want) in enumerate(zip(host["target_counts"], image_counts, strict=True)):
            if have != want:
                raise ValueError(
                    f"Sample {sample}: trajectory_target has {have} entries but the sample has {want} image tokens; "
                    "resample the teacher trajectory to the student's grid first."
                )
    for index, problem in enumerate((sample_problems or {}).keys()):
        bad = [sample for sample, flag in enumerate(host[f"problem_{index}"]) if flag]
        if bad:
            raise ValueError(f"Sample {bad[0]}: {problem}.")
    max_n = max(image_counts, default=0)
    # Positions of image tokens in order: sort keys put image positions first, stable in sequence order.
    order = torch.sort((~is_image).to(torch.int8), dim=1, stable=True).indices[:, :max_n]
    valid = torch.arange(max_n, device=input_ids.device) < counts.unsqueeze(1)
    num_labelled = host["num_labelled"][0] if labels is not None else None
    return TokenLayout(order, valid, image_counts, latent_positions, num_labelled)


__all__ = ["TokenLayout", "locate_tokens"]
