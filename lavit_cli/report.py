"""The demo's report: `report.md` with the experiment's figures stated plainly, and its plots."""

import json
from pathlib import Path
from typing import Any

import numpy as np

from .experiment import DIAGNOSTICS, VARIANTS
from .statistics import Estimate, bootstrap_mean, paired_difference


REFERENCE = "ce_only"


def correctness(students: dict[str, Any], variant: str, diagnostic: str, ids: list[str]) -> np.ndarray:
    """A variant's `(seeds, items)` 0/1 matrix under one diagnostic, items in `ids` order, seeds in sorted order."""
    runs = students[variant]
    return np.array([[runs[seed]["items"][diagnostic][item] for item in ids] for seed in sorted(runs, key=int)], float)


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Every estimate the report states: accuracy per variant and diagnostic, the paired difference of each variant
    against CE-only, and each variant's reliance on its latent tokens (normal minus masked, paired)."""
    students, ids = results["students"], results["test_ids"]
    summary = {"accuracy": {}, "versus_ce_only": {}, "reliance": {}, "probe": {}, "looks": {}}
    for variant in students:
        matrices = {d: correctness(students, variant, d, ids) for d in DIAGNOSTICS}
        summary["accuracy"][variant] = {d: bootstrap_mean(m) for d, m in matrices.items()}
        summary["reliance"][variant] = paired_difference(matrices["force"], matrices["mask"])
        probes = [run["probe_accuracy"] for run in students[variant].values()]
        summary["probe"][variant] = (float(np.mean(probes)), float(np.min(probes)), float(np.max(probes)))
        looks = [run["trajectory_mass_in_box"]["student"] for run in students[variant].values()]
        summary["looks"][variant] = (float(np.mean(looks)), float(np.min(looks)), float(np.max(looks)))
        if variant != REFERENCE:
            summary["versus_ce_only"][variant] = paired_difference(
                matrices["normal"], correctness(students, REFERENCE, "normal", ids)
            )
    return summary


def verdict(estimate: Estimate, better: str, worse: str, same: str) -> str:
    if estimate.low > 0:
        return better
    if estimate.high < 0:
        return worse
    return same


def findings(summary: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """Plain statements of what the estimates show, each with its interval, negative results included."""
    lines = []
    for variant, difference in summary["versus_ce_only"].items():
        lines.append(
            f"- **{variant} against ce_only** (normal decoding, paired by seed and item): {difference.format(signed=True)}; "
            + verdict(
                difference,
                "it beats CE-only at this budget.",
                "it is worse than CE-only at this budget.",
                "no difference is detectable at this budget (the interval contains 0).",
            )
        )
    for variant, reliance in summary["reliance"].items():
        lines.append(
            f"- **{variant} relies on its latent tokens?** Masking them (forced, then hidden from every later "
            f"position) changes its accuracy by {-reliance.mean * 100:+.1f} pp [{-reliance.high * 100:+.1f}, "
            f"{-reliance.low * 100:+.1f}]: "
            + verdict(
                reliance,
                "yes, the answer uses what the latent tokens computed.",
                "masking them helps, so they carry something that misleads the answer.",
                "no detectable reliance.",
            )
        )
    if "target_probe_accuracy" in results:
        lines.append(
            f"- **What the V_top targets carry**: the latent probe's classifier reads the answer from the teacher's "
            f"V_top targets themselves (as the students get them) at {results['target_probe_accuracy']:.1%}, where "
            f"the teacher answers {results['teacher']['accuracy']:.1%}: a student whose latent state matched its "
            "targets exactly would give a linear reader that much."
        )
    masses = results["teacher_trajectory_mass_in_box"]
    lines.append(
        "- **Where the teacher looks**: mass of its trajectory inside the marked shape's box, held-out mean: "
        + ", ".join(f"{name} {share:.1%}" for name, share in masses.items())
        + " (uniform: the box's share of the image)."
    )
    uniform = next(iter(next(iter(results["students"].values())).values()))["trajectory_mass_in_box"]["uniform"]
    lines.append(
        "- **Where each student looks** (its predicted trajectory, on its own grid; uniform there: "
        f"{uniform:.1%}): " + ", ".join(f"{variant} {looks[0]:.1%}" for variant, looks in summary["looks"].items()) + "."
    )
    return lines


def accuracy_plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(summary["accuracy"])
    figure, axis = plt.subplots(figsize=(1.6 + 1.5 * len(variants), 3.4))
    width = 0.8 / len(DIAGNOSTICS)
    for offset, diagnostic in enumerate(DIAGNOSTICS):
        estimates = [summary["accuracy"][v][diagnostic] for v in variants]
        centres = np.arange(len(variants)) + (offset - (len(DIAGNOSTICS) - 1) / 2) * width
        means = np.array([e.mean for e in estimates])
        errors = np.array([[e.mean - e.low for e in estimates], [e.high - e.mean for e in estimates]])
        axis.bar(centres, means, width, yerr=errors, capsize=3, label=diagnostic)
    axis.set_xticks(np.arange(len(variants)), variants, rotation=20, fontsize=8)
    axis.set_ylabel("held-out accuracy (95% CI)")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7, title="latent tokens", title_fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def loss_curves(out: Path, variants: list[str], seed: int, path: Path) -> None:
    """One panel per loss term, one line per variant (its given seed; stages placed end to end)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = ["loss_ce", "loss_vtop", "loss_traj"]
    figure, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.2))
    for variant in variants:
        folder = out / "students" / variant / f"seed{seed}"
        stages = [folder / "stage1", folder / "stage2"] if VARIANTS[variant].two_stage else [folder]
        offset, series = 0, {term: ([], []) for term in terms}
        for stage in stages:
            state = stage / "trainer_state.json"
            history = json.loads(state.read_text())["log_history"] if state.is_file() else []
            for entry in history:
                for term in terms:
                    if term in entry and "step" in entry:
                        series[term][0].append(offset + entry["step"])
                        series[term][1].append(entry[term])
            offset += max((entry.get("step", 0) for entry in history), default=0)
        for axis, term in zip(axes, terms, strict=True):
            if series[term][0]:
                axis.plot(*series[term], label=variant)
    for axis, term in zip(axes, terms, strict=True):
        axis.set_title(term)
        axis.set_xlabel("step")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def environment_line(results: dict[str, Any]) -> list[str]:
    found = results.get("environment")
    if not found:
        return []
    where = f"{found['device']}" + (f" ({found['gpu']})" if "gpu" in found else "")
    return [
        f"- Computed with torch {found['torch']} and transformers {found['transformers']} on {where}, CPU "
        f"{found['cpu']} ({found['cpu_capability']}, {found['threads']} threads). Figures can differ between machines "
        "(docs/experiments.md, Machines): compare figures within one report."
    ]


def write_report(out: Path, results: dict[str, Any]) -> str:
    args = results["arguments"]
    summary = summarise(results)
    accuracy_plot(summary, out / "accuracy.png")
    loss_curves(out, list(results["students"]), args["seeds"][0], out / "loss_curves.png")
    teacher = results["teacher"]
    lines = [
        "# LaViT demo report",
        "",
        "## Setup",
        "",
        f"- Task: the colour of the shape marked with a black dot, among two or three coloured shapes. Distillation "
        f"set: {args['train_size']} labelled samples; {args['test_size']} held-out items, never trained on.",
        f"- Teacher: tiny Qwen2.5-VL, width {args['teacher_hidden_size']}, {args['teacher_layers']} layers, "
        f"{args['teacher_image_size']}px images, fine-tuned {args['teacher_steps']} steps on "
        f"{args['teacher_steps'] * args['batch_size']} fresh samples of the task. Held-out accuracy "
        f"{teacher['accuracy']:.1%}.",
        f"- Student base: tiny Qwen2.5-VL, width {args['student_hidden_size']}, {args['student_layers']} layers, "
        f"{args['student_image_size']}px images, pre-trained {args['pretrain_steps']} steps on the general questions "
        f"only, then given {args['num_latent_tokens']} latent tokens followed by {args['latent_separator']!r} before "
        "the answer. Both models read images through the colour patch tower and keep their 151k-row vocabulary "
        "frozen (see `lavit_cli/demo.py`).",
        f"- Every student: {args['student_steps']} optimiser steps, batch {args['batch_size']}, peak learning rate "
        f"{args['learning_rate']} (two-stage runs: {args['stage1_share']:.0%} of the steps in stage 1, stage 2 at "
        f"{args['stage2_learning_rate_ratio']:g}x the rate), seeds "
        f"{args['seeds']}; trajectory target: the teacher's {args['trajectory_method']} trajectory; V_top targets: "
        f"{args['vtop_normalization']}, {args.get('vtop_source', 'pooled')}; heads on the "
        + ("final states." if args.get("head_layer") is None else f"states after {args['head_layer']} layers."),
        *environment_line(results),
        "- Diagnostics: `normal` decoding, `force` (the latent tokens written into the prompt), `mask` (forced, then "
        "hidden from every later position). Intervals: 95% bootstrap over seeds and items.",
        "",
        "## Results",
        "",
        "| variant | normal | force | mask | reliance (force - mask) | vs ce_only (normal) | latent probe | looks at the box |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, accuracy in summary["accuracy"].items():
        versus = summary["versus_ce_only"].get(variant)
        probe, looks = summary["probe"][variant], summary["looks"][variant]
        lines.append(
            f"| {variant} | "
            + " | ".join(accuracy[d].format() for d in DIAGNOSTICS)
            + f" | {summary['reliance'][variant].format(signed=True)} | "
            + (versus.format(signed=True) if versus else "(reference)")
            + f" | {probe[0]:.1%} ({probe[1]:.1%}-{probe[2]:.1%}) | {looks[0]:.1%} ({looks[1]:.1%}-{looks[2]:.1%}) |"
        )
    lines += [
        "",
        "The latent probe is a linear classifier reading the answer from the last latent token's final state "
        "(forced latent tokens), trained on the distillation set and scored on the held-out items (range over seeds). "
        "`looks at the box`: the mass of the student's predicted trajectory (its trajectory head, or its latent tokens' "
        "attention under `latent_attention`) inside the marked shape's box on the held-out items.",
        "",
        "## What the numbers show",
        "",
        *findings(summary, results),
        "",
        "![accuracy](accuracy.png)",
        "",
        "![loss curves](loss_curves.png)",
        "",
        f"Wall time: {results['seconds'] / 60:.1f} minutes.",
        "",
    ]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text


__all__ = ["findings", "summarise", "write_report"]
