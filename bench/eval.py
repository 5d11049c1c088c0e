"""Benchmark of `lavit eval`'s batched greedy generation against one-item-at-a-time generation, in the same run.

Random weights at a real shape, the real Qwen tokenizer, MMVP-like prompts (a question with two options) on
random images. Random weights rarely emit EOS, so every item decodes `--new-tokens` tokens in both arms.

    python bench/eval.py --shape 3b --device cuda --items 32 --batch-size 16 --new-tokens 64
    python bench/eval.py --shape tiny --device cpu --items 4 --batch-size 4 --new-tokens 8   # smoke run
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image


sys.path.insert(0, str(Path(__file__).resolve().parent))

from shapes import shape_config  # noqa: E402

from evaluate_metrics.runner import EvalRunner  # noqa: E402
from lavit_hf import LaViTConfig, LaViTForConditionalGeneration, add_latent_tokens, build_qwen2_5_vl_processor  # noqa: E402


def build(shape: str, device: str, dtype: torch.dtype, image_side: int):
    processor = build_qwen2_5_vl_processor(min_pixels=image_side * image_side, max_pixels=image_side * image_side)
    ids = add_latent_tokens(processor.tokenizer, 4)
    config = LaViTConfig(**shape_config(shape, len(processor.tokenizer)), latent_token_ids=ids, teacher_hidden_size=64)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LaViTForConditionalGeneration(config).to(dtype)
    return model.eval(), processor


def rows(count: int, side: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for index in range(count):
        pixels = torch.randint(0, 256, (side, side, 3), generator=generator, dtype=torch.uint8).numpy()
        question = f"Item {index}: is the object facing left or right? (a) left (b) right"
        out.append({"id": str(index), "image": Image.fromarray(pixels), "question": question})
    return out


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=["tiny", "3b", "7b"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--image-side", type=int, default=448, help="square images; 448 gives 256 image tokens")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, processor = build(args.shape, args.device, dtype, args.image_side)
    items = rows(args.items, args.image_side)
    side = args.image_side * args.image_side
    limits = {"min_pixels": side, "max_pixels": side}
    batched = EvalRunner(model, processor, batch_size=args.batch_size, max_new_tokens=args.new_tokens, **limits)
    single = EvalRunner(model, processor, batch_size=1, max_new_tokens=args.new_tokens, **limits)
    batched.generate(items[: args.batch_size])  # warm-up (kernels, allocator)

    def run(runner):
        for start in range(0, len(items), runner.batch_size):
            runner.generate(items[start : start + runner.batch_size])

    one_s = timed(lambda: run(single), args.device)
    batch_s = timed(lambda: run(batched), args.device)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"shape={args.shape} device={device} items={args.items} new_tokens={args.new_tokens} "
        f"image_tokens={side // 784}"
    )
    print("| runner | batch | seconds | items/s | ratio |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| one at a time (reference) | 1 | {one_s:.2f} | {args.items / one_s:.2f} | 1.00 |")
    print(f"| batched | {args.batch_size} | {batch_s:.2f} | {args.items / batch_s:.2f} | {one_s / batch_s:.2f} |")


if __name__ == "__main__":
    main()
