"""The `lavit` console script: one verb per step of the pipeline, each a module with `make_parser()` and `main(args)`.

Every verb takes `--config FILE.yaml`: its keys are the verb's option names (dashes or underscores), they set the
defaults, and flags given on the command line win. An unknown key is an error, never silently dropped.
"""

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from lavit_hf.arguments import parse_with_config


# verb -> (module holding make_parser() and main(args), one-line help)
COMMANDS = {
    "make-tiny": ("lavit_hf.tiny_cli", "save a tiny random LaViT student or Qwen2.5-VL teacher with its processor"),
    "extract": ("datasets_scripts.extract", "run a teacher over a question-answer source into a LaViT dataset"),
    "train": ("trainer.train", "train a LaViT student, in one stage or two"),
    "eval": ("evaluate_metrics.runner", "generate answers on a benchmark with one or more models and score them"),
    "demo": ("lavit_cli.demo", "the whole pipeline end to end on a procedurally generated task"),
}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="lavit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items()))
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return
    command = top.parse_args(argv[:1]).command
    module = importlib.import_module(COMMANDS[command][0])
    parser = module.make_parser()
    parser.prog = f"lavit {command}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module.main(parse_with_config(parser, argv[1:]))


__all__ = ["COMMANDS", "main"]
