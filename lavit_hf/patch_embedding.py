"""The Qwen vision towers' patch embedding as the matrix product it is.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL embed each patch with an `nn.Conv3d` whose kernel equals its stride on an input
already cut into single patches: every output is one dot product of a flattened patch with a flattened filter. cuDNN
runs that convolution far slower than cuBLAS runs the same product as a GEMM (transformers issue #45750 reports up to
several orders of magnitude on some GPU and dtype pairs). `use_linear_patch_embedding` switches the forward of such a
module to `F.linear` on the same weight, viewed flat: no parameter is renamed, added or reshaped, so state dicts,
`save_pretrained`, PEFT target names and optimiser states are those of the stock model.

transformers' own `fusion_config={"patch_embeddings": True}` makes the same product, but at `from_pretrained` only, by
patching the module class for every later model and renaming the weight (`patch_embed.linear_proj`); its docs scope it
to inference.
"""

import types

import torch
import torch.nn.functional as F
from torch import nn


def _is_patchwise(conv: nn.Module) -> bool:
    """Whether `conv` is an `nn.Conv3d` whose windows do not overlap or skip (kernel == stride, no padding, dilation
    or groups): then it is a linear map of each flattened patch."""
    return (
        type(conv) is nn.Conv3d
        and tuple(conv.stride) == tuple(conv.kernel_size)
        and tuple(conv.padding) == (0, 0, 0)
        and tuple(conv.dilation) == (1, 1, 1)
        and conv.groups == 1
    )


def linear_patch_embedding_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """The family's patch embedding forward (`(patches, channels * frames * height * width)` in, `(patches,
    embed_dim)` out) as one GEMM. Should `proj` have been replaced since the switch (a PEFT adapter on it, say), the
    family's own forward runs instead, so the replacement is never bypassed; so it does while DeepSpeed ZeRO-3
    partitions the weight (`ds_id`), which it gathers only around a call of `proj` itself."""
    conv = self.proj
    if not _is_patchwise(conv) or hasattr(conv.weight, "ds_id"):
        return type(self).forward(self, hidden_states)
    weight = conv.weight
    patches = hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype)
    return F.linear(patches, weight.flatten(1), conv.bias)


def use_linear_patch_embedding(model: nn.Module) -> int:
    """Run every patch embedding of `model` (a module named `patch_embed`, as transformers' fusion matches them) whose
    projection `proj` is a patch-wise `nn.Conv3d` (the Qwen2-VL, Qwen2.5-VL and Qwen3-VL towers) as `F.linear` on the
    same weight; returns how many were switched (0 for towers without one, such as Gemma 3's and LLaVA's). Speed
    only: the outputs equal the convolution's up to floating-point summation order. Works through wrappers (DDP, PEFT)
    and is idempotent."""
    switched = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] != "patch_embed" or "forward" in vars(module):
            continue
        if _is_patchwise(getattr(module, "proj", None)):
            module.forward = types.MethodType(linear_patch_embedding_forward, module)
            switched += 1
    return switched


__all__ = ["linear_patch_embedding_forward", "use_linear_patch_embedding"]
