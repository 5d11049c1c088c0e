"""Command-line options from a YAML file and flags, for every verb's parser."""

import argparse
from collections.abc import Sequence

import yaml


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse `argv` with `parser`, taking defaults from the YAML file named by `--config` (flags win).

    Works for any argparse parser, `transformers.HfArgumentParser` included.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    if known.config is not None:
        with open(known.config) as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{known.config}: expected a mapping of option names to values, got {type(values).__name__}.")
        destinations = {action.dest for action in parser._actions}
        values = {str(key).replace("-", "_"): value for key, value in values.items()}
        unknown = sorted(set(values) - destinations)
        if unknown:
            raise ValueError(f"{known.config}: unknown option(s) {unknown}; known: {sorted(destinations - {'help'})}.")
        parser.set_defaults(**values)
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    return parser.parse_args(rest)


__all__ = ["parse_with_config"]
