"""LaViT's loss terms and their combination (docs/method.md section 2), as pure functions: the model computes each
term, and the model and the trainer both combine them with `combine_losses`.

This file is copied next to saved checkpoints with the modeling code (remote code): it imports only torch.
"""

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


LOSS_TERMS = ("loss_ce", "loss_vtop", "loss_traj")
# Each term's weight, by the name of the `LaViTConfig` field holding it.
LOSS_WEIGHTS = {"loss_ce": "ce_loss_weight", "loss_vtop": "vtop_loss_weight", "loss_traj": "trajectory_loss_weight"}


def vtop_cosine_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`1 - cos(prediction, target)` averaged over the batch (docs/method.md section 2, V_top head).

    Args:
        prediction (`torch.Tensor` of shape `(batch_size, dim)`): the V_top head's output.
        target (`torch.Tensor` of shape `(batch_size, dim)`): the teacher's pooled top-layer image features.
    """
    return (1.0 - F.cosine_similarity(prediction.float(), target.float(), dim=-1)).mean()


def trajectory_kl_loss(log_probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`KL(target || predicted)` over each sample's image tokens, averaged over the batch (docs/method.md section 2).

    Terms where the target is 0 contribute 0 (the limit of `t log t`), so a sparse target is fine.

    Args:
        log_probs (`torch.Tensor` of shape `(batch_size, n)`): predicted log-distribution; values outside `mask`
            are ignored.
        target (`torch.Tensor` of shape `(batch_size, n)`): the teacher's distribution, summing to 1 over `mask`.
        mask (`torch.BoolTensor` of shape `(batch_size, n)`): which entries are image tokens of the sample.
    """
    target = target.float() * mask
    log_probs = log_probs.float().masked_fill(~mask, 0.0)
    pointwise = torch.where(target > 0, target * (torch.log(target.clamp_min(1e-30)) - log_probs), 0.0)
    return pointwise.sum(-1).mean()


def labelled_causal_lm_loss(
    lm_head: nn.Module,
    hidden_states: torch.Tensor,
    labels: torch.LongTensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    num_labelled: int | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy computed from the final hidden states at the labelled positions only.

    Equals transformers' `ForCausalLMLoss` on full logits, without materialising `(sequence x vocabulary)` logits
    for the unlabelled positions (the prompt and the image, most of a LaViT sequence). The sum over tokens is divided
    by `num_items_in_batch` (the labelled tokens of the whole accumulation step) when given, else by this batch's.

    Args:
        lm_head (`nn.Module`): the output projection.
        hidden_states (`torch.Tensor` of shape `(batch_size, seq_len, hidden_size)`): final hidden states.
        labels (`torch.LongTensor` of shape `(batch_size, seq_len)`): token ids, -100 where unlabelled (unshifted).
        num_items_in_batch (`int` or `torch.Tensor`, *optional*): the denominator.
        num_labelled (`int`, *optional*): how many positions are labelled, when the caller knows it; the positions
            are then gathered without the host sync that boolean indexing costs.
    """
    shift_labels = labels[:, 1:]
    selected = shift_labels != -100
    if num_labelled is None:
        states, targets = hidden_states[:, :-1][selected], shift_labels[selected]
    else:
        # Labelled positions first, in sequence order (a stable sort), then the first `num_labelled` of them.
        index = torch.sort((~selected).flatten().to(torch.int8), stable=True).indices[:num_labelled]
        states = hidden_states[:, :-1].flatten(0, 1).index_select(0, index)
        targets = shift_labels.flatten().index_select(0, index)
    logits = lm_head(states).float()
    total = F.cross_entropy(logits, targets, reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = selected.sum()
    if torch.is_tensor(num_items_in_batch):
        return total / num_items_in_batch.to(total.device).clamp(min=1)
    return total / max(num_items_in_batch, 1)


def loss_weights(config) -> dict[str, float]:
    """Each loss term's weight in `config` (a `LaViTConfig`), by term name."""
    return {term: getattr(config, field) for term, field in LOSS_WEIGHTS.items()}


def ce_enters_loss(config) -> bool:
    """Whether the cross-entropy enters the total: always, except in stage 1 without `ce_in_stage1` (where it is
    still computed and reported, without gradient)."""
    return config.training_stage != 1 or config.ce_in_stage1


def combine_losses(
    losses: Mapping[str, torch.Tensor | None],
    weights: Mapping[str, float],
    ce_enters: bool = True,
    ce_scale: float = 1.0,
    aux_scale: float = 1.0,
) -> torch.Tensor | None:
    """`w_ce * CE + w_vtop * loss_vtop + w_traj * loss_traj` over the terms present (docs/method.md section 2), each
    scaled for gradient accumulation; `None` when no term is present (inference).

    Args:
        losses (`Mapping[str, torch.Tensor | None]`): `loss_ce`, `loss_vtop`, `loss_traj`; a missing or `None` term is
            left out.
        weights (`Mapping[str, float]`): each term's weight, by term name (`loss_weights(config)`).
        ce_enters (`bool`, *optional*, defaults to `True`): whether CE enters the total (`ce_enters_loss(config)`).
        ce_scale (`float`, *optional*, defaults to 1.0): factor of the CE term. Under accumulation CE is already a
            share of the step's token average (its sum divided by `num_items_in_batch`); the factor is the number of
            processes when that count is summed over processes (DDP then averages the gradients), else 1.
        aux_scale (`float`, *optional*, defaults to 1.0): factor of the per-batch V_top and trajectory means:
            `1 / accumulation steps`, so that the accumulated gradient is their mean over the micro-batches.

    Example:

    ```python
    >>> import torch
    >>> losses = {"loss_ce": torch.tensor(2.0), "loss_vtop": torch.tensor(0.5), "loss_traj": None}
    >>> weights = {"loss_ce": 1.0, "loss_vtop": 0.3, "loss_traj": 0.3}
    >>> round(combine_losses(losses, weights).item(), 4), round(combine_losses(losses, weights, ce_enters=False).item(), 4)
    (2.15, 0.15)

    ```
    """
    terms = []
    for name in LOSS_TERMS:
        value = losses.get(name)
        if value is None or (name == "loss_ce" and not ce_enters):
            continue
        scale = ce_scale if name == "loss_ce" else aux_scale
        terms.append(weights[name] * scale * value)
    return torch.stack(terms).sum() if terms else None


__all__ = [
    "LOSS_TERMS",
    "LOSS_WEIGHTS",
    "ce_enters_loss",
    "combine_losses",
    "labelled_causal_lm_loss",
    "loss_weights",
    "trajectory_kl_loss",
    "vtop_cosine_loss",
]
