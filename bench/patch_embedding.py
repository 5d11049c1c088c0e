"""Patch-embedding benchmark: the Qwen2.5-VL tower's Conv3d patch embedding against the same weight as one GEMM.

    python bench/patch_embedding.py --shape 3b --device cuda      # the 3B student's tower (random weights), bf16
    python bench/patch_embedding.py --shape tiny --device cpu     # smoke run

`lavit train` (on CUDA, `linear_patch_embedding`) and `lavit extract` (on CUDA) run the patch embedding, a `Conv3d`
whose kernel equals its stride, as `F.linear` on the same weight (`lavit_hf.patch_embedding`). Here both run on the
same pixels, `--batch_size` images of `--image_size` cut into patches as the processor cuts them, in `--dtype`, under
`torch.no_grad` as the frozen tower runs in training: the patch embedding alone, then the whole tower forward with its
windowed attention packed (`PACKED_VISION_ATTENTION`, as the trainer sets). Reported: the mean seconds over
`--steps` timed calls after a warm-up, the ratio of the reference (Conv3d) time to the GEMM's, and how far the GEMM's
outputs lie from the convolution's (relative norm of the difference; the same function summed in another order).
"""

import argparse
import copy
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))

from shapes import shape_config  # noqa: E402
from train_step import cuda_seconds  # noqa: E402


def timed(fn, warmup: int, steps: int) -> float:
    """Mean seconds of `fn()` over `steps` synchronised calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    return cuda_seconds(fn, repeats=steps)


def main(argv: list[str] | None = None) -> None:
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from lavit_hf.attention import PACKED_VISION_ATTENTION
    from lavit_hf.patch_embedding import use_linear_patch_embedding

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "3b", "7b", "32b"], default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="default: bf16 on CUDA")
    parser.add_argument("--batch_size", type=int, default=4, help="images per forward")
    parser.add_argument("--image_size", type=int, nargs=2, default=[1344, 1008], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_cuda else "float32"))

    config = Qwen2_5_VLConfig(**shape_config(args.shape, 151_669)).vision_config
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(args.device):
        conv_tower = Qwen2_5_VisionTransformerPretrainedModel(config).to(dtype).eval().requires_grad_(False)
    conv_tower.config._attn_implementation = PACKED_VISION_ATTENTION  # as use_packed_vision_attention sets it
    linear_tower = copy.deepcopy(conv_tower)
    assert use_linear_patch_embedding(linear_tower) == 1

    # The processor's cut: `patch_size` pixels a side, `temporal_patch_size` frames, both sides a multiple of the
    # merge unit.
    unit = config.patch_size * config.spatial_merge_size
    width, height = (side // unit * unit for side in args.image_size)
    grid = torch.tensor([[1, height // config.patch_size, width // config.patch_size]] * args.batch_size)
    patch_volume = config.in_channels * config.temporal_patch_size * config.patch_size**2
    pixels = torch.randn(int(grid.prod(-1).sum()), patch_volume, device=args.device, dtype=dtype)
    grid = grid.to(args.device)

    rows = []
    with torch.no_grad():
        for part, call in (
            ("patch embedding", lambda tower: tower.patch_embed(pixels)),
            ("tower forward", lambda tower: tower(pixels, grid_thw=grid).pooler_output),
        ):
            reference = call(conv_tower).float()
            ours = call(linear_tower).float()
            error = ((ours - reference).norm() / reference.norm()).item()
            conv_s, linear_s = (
                timed(lambda tower=tower, call=call: call(tower), args.warmup, args.steps)
                for tower in (conv_tower, linear_tower)
            )
            rows.append((part, conv_s, linear_s, error))

    device_name = torch.cuda.get_device_name() if on_cuda else "cpu"
    print(
        f"\n{args.shape} tower, {args.batch_size} images of {width}x{height} ({pixels.shape[0]} patches), {dtype}, "
        f"{device_name}, torch {torch.__version__}\n"
    )
    print("| part | Conv3d (reference) s | one GEMM s | reference / GEMM | relative difference |")
    print("| --- | --- | --- | --- | --- |")
    for part, conv_s, linear_s, error in rows:
        print(f"| {part} | {conv_s:.5f} | {linear_s:.5f} | {conv_s / linear_s:.2f}x | {error:.1e} |")


if __name__ == "__main__":
    main()
