"""`lavit make-tiny`: save a tiny random LaViT student or plain teacher of a tiny family, with its processor, offline.

Examples:
    lavit make-tiny --kind teacher --out /tmp/tiny-teacher
    lavit make-tiny --kind teacher --family gemma3 --out /tmp/tiny-gemma3-teacher
    lavit make-tiny --kind student --family qwen3_vl --out /tmp/tiny-qwen3-student
"""

import argparse

from .tiny import TINY_FAMILIES, save_tiny


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["student", "teacher"], required=True, help="LaViT student or plain teacher")
    parser.add_argument("--family", choices=TINY_FAMILIES, default="qwen2_5_vl",
                        help="the model family, by model_type (a student needs a student family)")
    parser.add_argument("--out", required=True, help="folder to write the model and processor to")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return parser


def main(args: argparse.Namespace) -> None:
    save_tiny(args.kind, args.out, seed=args.seed, family=args.family)


__all__ = ["main", "make_parser"]
