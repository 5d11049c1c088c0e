"""`lavit eval`: batched greedy generation on a benchmark, resumable JSONL predictions, and the benchmark's score.

The same processor pixel limits apply to a base Qwen2.5-VL and a LaViT model (METHOD.md section 4), and any checkpoint
that `AutoModelForImageTextToText` loads works. Two diagnostics exist for LaViT models: `--force-latent` writes the K
trained latent tokens at the start of the answer, and `--mask-latent` hides them from every later position, for every
generated token.

Example:
    lavit eval --model ./lavit-3b --benchmark mmvp --data-root ./MMVP --output mmvp.jsonl --batch-size 8
"""

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import datasets
import evaluate
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

import lavit_hf  # noqa: F401  (registers LaViT with the Auto classes)
from lavit_hf.images import to_rgb
from lavit_hf.layout import render_prompt, set_pixel_limits
from lavit_hf.processing import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

from . import BENCHMARKS, module_path


logger = logging.getLogger(__name__)


def _images(row: dict[str, Any]) -> list:
    image = row.get("image")
    if image is None:
        return []
    return [to_rgb(img) for img in (image if isinstance(image, list) else [image])]


def latent_prefix(model: PreTrainedModel, processor: ProcessorMixin) -> str:
    """The K trained latent tokens as text, in order; a clear error for a model that has none."""
    ids = getattr(model.config, "latent_token_ids", None)
    if not ids:
        raise ValueError(f"{type(model).__name__} has no latent tokens: --force-latent needs a LaViT model.")
    return "".join(processor.tokenizer.convert_ids_to_tokens(ids))


class EvalRunner:
    """Batched greedy generation over benchmark rows.

    Args:
        model (`PreTrainedModel`): any image-text-to-text model; LaViT models accept the two switches.
        processor (`ProcessorMixin`): its processor; its pixel limits are set here so that all models match.
        batch_size (`int`, *optional*, defaults to 8): rows per `generate` call (left padding).
        max_new_tokens (`int`, *optional*, defaults to 512): the paper's limit.
        force_latent (`bool`, *optional*, defaults to `False`): start every answer with the K latent tokens.
        mask_latent (`bool`, *optional*, defaults to `False`): no later position attends to the latent tokens.
        min_pixels, max_pixels (`int`, *optional*): the image processor's limits, the same for every model.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        batch_size: int = 8,
        max_new_tokens: int = 512,
        force_latent: bool = False,
        mask_latent: bool = False,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.mask_latent = mask_latent
        if mask_latent and not getattr(model.config, "latent_token_ids", None):
            raise ValueError(f"{type(model).__name__} has no latent tokens: --mask-latent needs a LaViT model.")
        self.prefix = latent_prefix(model, processor) if force_latent else ""
        set_pixel_limits(processor, min_pixels, max_pixels)
        processor.tokenizer.padding_side = "left"

    def prompts(self, rows: list[dict[str, Any]]) -> list[str]:
        return [
            render_prompt(self.processor, row["question"], len(_images(row))) + self.prefix
            for row in rows
        ]

    @torch.no_grad()
    def generate(self, rows: list[dict[str, Any]]) -> list[str]:
        """Greedy answers for `rows` (each with `question` and `image`), decoded without special tokens."""
        images = [img for row in rows for img in _images(row)]
        inputs = self.processor(
            text=self.prompts(rows), images=images or None, return_tensors="pt", padding=True
        ).to(self.model.device)
        extra = {"mask_latent": True} if self.mask_latent else {}
        output = self.model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=self.max_new_tokens,
            pad_token_id=self.processor.tokenizer.pad_token_id,
            **extra,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)

    def run(self, dataset: datasets.Dataset, output: Path, max_samples: int | None = None) -> list[dict[str, Any]]:
        """Generate for every row not yet in `output` (JSONL, appended batch by batch) and return all predictions."""
        done = read_predictions(output)
        rows = dataset.select(range(min(len(dataset), max_samples))) if max_samples else dataset
        todo = [i for i, row_id in enumerate(rows["id"]) if row_id not in done]
        logger.info("%d of %d items already in %s; generating %d", len(rows) - len(todo), len(rows), output, len(todo))
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("a") as handle, tqdm(total=len(todo), desc="generating", unit="item") as bar:
            for start in range(0, len(todo), self.batch_size):
                batch = [rows[i] for i in todo[start : start + self.batch_size]]
                for row, text in zip(batch, self.generate(batch)):
                    record = {"id": row["id"], "prediction": text}
                    handle.write(json.dumps(record) + "\n")
                    done[row["id"]] = record
                handle.flush()
                bar.update(len(batch))
        return [done[row_id] for row_id in rows["id"]]


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """Finished predictions by id; a torn last line (a kill mid-write) is dropped and regenerated."""
    if not path.exists():
        return {}
    records = {}
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                logger.warning("%s: dropping a torn last line; it will be regenerated", path)
                path.write_text("".join(f"{kept}\n" for kept in lines[:-1]))
                break
            raise ValueError(f"{path}, line {number}: not JSON ({error}).") from error
        records[record["id"]] = record
    return records


def score(benchmark: str, dataset: datasets.Dataset, predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """The benchmark module's score of `predictions` against the dataset's rows (joined by id)."""
    metric = evaluate.load(module_path(benchmark))
    reference_fields = list(metric.features["references"])
    by_id = {row_id: index for index, row_id in enumerate(dataset["id"])}
    references = dataset.select_columns(reference_fields).select([by_id[p["id"]] for p in predictions])
    return metric.compute(predictions=predictions, references=list(references))


def summary_markdown(benchmark: str, model: str, scores: dict[str, Any]) -> str:
    lines = [f"# {benchmark} — {model}", "", "| metric | value |", "| --- | --- |"]
    for key, value in scores.items():
        lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    return "\n".join(lines) + "\n"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder that AutoModelForImageTextToText loads")
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS), help="which benchmark")
    parser.add_argument("--data-root", required=True, help="the benchmark's official local layout")
    parser.add_argument("--output", required=True, help="predictions JSONL; a rerun skips the ids already there")
    parser.add_argument("--max-samples", type=int, default=None, help="only the first N items")
    parser.add_argument("--batch-size", type=int, default=8, help="items per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="greedy decoding limit (the paper: 512)")
    parser.add_argument("--force-latent", action="store_true", help="start every answer with the K latent tokens")
    parser.add_argument("--mask-latent", action="store_true", help="no later position may attend to latent tokens")
    parser.add_argument("--min-pixels", type=int, default=DEFAULT_MIN_PIXELS, help="image processor lower limit")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="image processor upper limit")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"], help="weights dtype")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a checkpoint's own modeling code")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    model = AutoModelForImageTextToText.from_pretrained(
        args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code
    ).to(args.device)
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    dataset = BENCHMARKS[args.benchmark].loader(args.data_root)
    runner = EvalRunner(
        model,
        processor,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        force_latent=args.force_latent,
        mask_latent=args.mask_latent,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
    )
    output = Path(args.output)
    predictions = runner.run(dataset, output, args.max_samples)
    scores = score(args.benchmark, dataset, predictions)
    stem = output.with_suffix("")
    Path(f"{stem}.summary.json").write_text(json.dumps({"benchmark": args.benchmark, "model": args.model, **scores}, indent=2))
    markdown = summary_markdown(args.benchmark, args.model, scores)
    Path(f"{stem}.summary.md").write_text(markdown)
    logger.info("\n%s", markdown)
    return scores


__all__ = ["EvalRunner", "main", "make_parser", "read_predictions", "score"]
