"""LaViT's two heads and their targets (docs/method.md section 2): the V_top head, the trajectory head, and the checks
and alignment of the teacher targets they are trained on.

This file is copied next to saved checkpoints with the modeling code (remote code): it imports only torch and its
sibling.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .token_layout import TokenLayout


# A target distribution may be off by rounding (float16 storage, resampling), not more; the collator allows the same.
DISTRIBUTION_TOLERANCE = 1e-2


def build_vtop_head(hidden_size: int, teacher_hidden_size: int | None) -> nn.Module | None:
    """`Linear(d, d) -> GELU -> Linear(d, teacher_hidden_size)`; no head without a teacher width."""
    if teacher_hidden_size is None:
        return None
    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, teacher_hidden_size))


def latent_head_input(
    latent_positions: torch.LongTensor, hidden_states: torch.Tensor, head_input: str
) -> torch.Tensor:
    """The latent state `(batch_size, d)` that feeds both heads: the last latent token's final hidden state, or the
    mean over the K latent tokens with `head_input="mean_latent"`."""
    states = hidden_states.gather(1, latent_positions.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1]))
    if head_input == "mean_latent":
        return states.mean(dim=1)
    return states[:, -1]


def require_image_tokens(layout: TokenLayout) -> None:
    """A trajectory is a distribution over a sample's image tokens: refuse a sample without any, naming it."""
    empty = [sample for sample, count in enumerate(layout.image_counts) if count == 0]
    if empty:
        raise ValueError(f"Sample {empty[0]}: no image tokens, so it has no trajectory to predict.")


def predict_trajectory(
    trajectory_query: nn.Module, latent_state: torch.Tensor, hidden_states: torch.Tensor, layout: TokenLayout
) -> torch.Tensor:
    """The predicted log-distribution over each sample's image tokens (the trajectory head): a query projection of the
    latent state dotted with the final hidden states at the image tokens, scaled by `1/sqrt(d)` as an attention score
    is (so that a fresh head starts near uniform), then `log_softmax`; `-inf` past a sample's own image tokens."""
    require_image_tokens(layout)
    positions, valid = layout.image_positions, layout.image_valid
    image_states = hidden_states.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1]))
    query = trajectory_query(latent_state)
    scores = torch.einsum("bd,bnd->bn", query.float(), image_states.float()) / math.sqrt(query.shape[-1])
    return torch.log_softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)


def latent_attention_trajectory(latent_attention: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """The latent tokens' own trajectory (`trajectory_prediction="latent_attention"`): their attention weights at each
    sample's image tokens, averaged over the K latent tokens and renormalised over the image tokens, as a
    log-distribution; `-inf` past a sample's own image tokens.

    Args:
        latent_attention (`torch.Tensor` of shape `(batch_size, K, seq_len)`): the head- and layer-averaged attention
            weights of the latent tokens over every key (`LatentAttentionRecorder.mean`).
        layout (`TokenLayout`): the batch's image positions.
    """
    require_image_tokens(layout)
    weights = latent_attention.mean(1).gather(1, layout.image_positions).masked_fill(~layout.image_valid, 0.0)
    log_weights = torch.log(weights.clamp_min(torch.finfo(weights.dtype).tiny))
    log_probs = log_weights - torch.logsumexp(log_weights.masked_fill(~layout.image_valid, float("-inf")), -1, True)
    return log_probs.masked_fill(~layout.image_valid, float("-inf"))


def check_vtop_target(vtop_target: torch.Tensor, teacher_hidden_size: int | None) -> None:
    """Check a V_top target's shape: `(batch, D)` or token-wise `(batch, n, D)`."""
    if vtop_target.ndim not in (2, 3) or vtop_target.shape[-1] != teacher_hidden_size:
        raise ValueError(
            f"vtop_target has shape {tuple(vtop_target.shape)}: expected (batch, {teacher_hidden_size}) or "
            f"(batch, n, {teacher_hidden_size})."
        )


def pool_vtop_target(vtop_target: torch.Tensor, vtop_target_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean-pool a token-wise V_top target `(batch, n, D)` over `vtop_target_mask` to `(batch, D)`; a pooled one is
    returned as it is. The shape is checked by `check_vtop_target`, the mask's rows by `vtop_target_problems`."""
    if vtop_target.ndim == 2:
        return vtop_target
    if vtop_target_mask is None:
        return vtop_target.float().mean(dim=1)
    weights = vtop_target_mask.to(torch.float32).unsqueeze(-1)
    # Padded rows may hold anything (NaN included): they are zeroed, not multiplied by a zero weight.
    rows = torch.where(weights.bool(), vtop_target.float(), 0.0)
    return rows.sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def vtop_target_problems(vtop_target: torch.Tensor, vtop_target_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-sample flags of a bad V_top target, for `locate_tokens(sample_problems=)` (checked with its one sync)."""
    if vtop_target.ndim == 2:
        return {"vtop_target holds non-finite values": ~torch.isfinite(vtop_target).all(dim=-1)}
    valid = torch.ones(vtop_target.shape[:2], dtype=torch.bool, device=vtop_target.device)
    if vtop_target_mask is not None:
        valid = vtop_target_mask.bool()
    finite = torch.isfinite(vtop_target).all(dim=-1) | ~valid
    return {
        "vtop_target_mask selects no row of the token-wise vtop_target": ~valid.any(dim=1),
        "vtop_target holds non-finite values": ~finite.all(dim=1),
    }


def check_trajectory_target(
    trajectory_target: torch.Tensor, trajectory_mask: torch.Tensor | None, batch_size: int
) -> torch.Tensor:
    """Check the target's shapes and return its mask (all entries when none was given)."""
    if trajectory_target.ndim != 2 or trajectory_target.shape[0] != batch_size:
        raise ValueError(
            f"trajectory_target has shape {tuple(trajectory_target.shape)}: expected (batch={batch_size}, "
            "max_image_tokens)."
        )
    if trajectory_mask is None:
        return torch.ones_like(trajectory_target, dtype=torch.bool)
    if trajectory_mask.shape != trajectory_target.shape:
        raise ValueError(
            f"trajectory_mask has shape {tuple(trajectory_mask.shape)}, trajectory_target "
            f"{tuple(trajectory_target.shape)}: they must match."
        )
    return trajectory_mask.bool()


def trajectory_target_problems(
    trajectory_target: torch.Tensor, trajectory_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-sample flags of a trajectory target that is no distribution over its valid entries (non-finite, negative,
    or not summing to 1), for `locate_tokens(sample_problems=)`."""
    target = trajectory_target.float()
    finite = (torch.isfinite(target) | ~trajectory_mask).all(dim=1)
    negative = ((target < 0) & trajectory_mask).any(dim=1)
    total = torch.where(trajectory_mask, target, 0.0).sum(dim=1)
    return {
        "trajectory_target holds non-finite values": ~finite,
        "trajectory_target has negative entries": negative,
        "trajectory_target does not sum to 1 over trajectory_mask": finite
        & ((total - 1).abs() > DISTRIBUTION_TOLERANCE),
    }


def align_trajectory_target(
    trajectory_target: torch.Tensor, trajectory_mask: torch.Tensor, image_valid: torch.Tensor
) -> torch.Tensor:
    """Each sample's target entries (those of `trajectory_mask`, in order) placed at its image tokens: a
    `(batch_size, max_image_tokens)` tensor laid out as `image_valid`. The counts per sample must match
    (`locate_tokens` checks them); no host sync.

    Example:

    ```python
    >>> import torch
    >>> target, mask = torch.tensor([[0.2, 9.0, 0.8]]), torch.tensor([[True, False, True]])
    >>> align_trajectory_target(target, mask, torch.tensor([[True, True]])).tolist()
    [[0.20000000298023224, 0.800000011920929]]

    ```
    """
    width = image_valid.shape[1]
    if trajectory_target.shape[1] < width:  # a target narrower than the image tokens: pad it with masked zeros
        pad = width - trajectory_target.shape[1]
        trajectory_target = F.pad(trajectory_target, (0, pad))
        trajectory_mask = F.pad(trajectory_mask, (0, pad))
    # Each sample's entries first, in order (a stable sort), then as many as the widest sample has image tokens.
    order = torch.sort((~trajectory_mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
    aligned = trajectory_target.float().gather(1, order)
    return torch.where(image_valid, aligned, 0.0)


__all__ = [
    "DISTRIBUTION_TOLERANCE",
    "align_trajectory_target",
    "build_vtop_head",
    "check_trajectory_target",
    "check_vtop_target",
    "latent_head_input",
    "pool_vtop_target",
    "predict_trajectory",
    "trajectory_target_problems",
    "vtop_target_problems",
]
