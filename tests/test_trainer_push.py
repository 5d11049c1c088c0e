"""`lavit train --push_to_hub` against the in-process fake Hub (`tests/fake_hub.py`), then the model loaded back."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml
from fake_hub import fake_hub_env

from lavit_hf.testing_utils import synthetic_lavit_dataset


D = 48
REPO_ID = "fake-user/lavit-tiny"
LOAD_BACK = textwrap.dedent(
    f"""
    import json
    from huggingface_hub import hf_hub_download
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained("{REPO_ID}", trust_remote_code=True)
    processor = AutoProcessor.from_pretrained("{REPO_ID}", trust_remote_code=True)
    card = open(hf_hub_download("{REPO_ID}", "README.md")).read()
    print("RESULT " + json.dumps({{
        "class": type(model).__name__, "stage": model.config.training_stage,
        "latent": processor.tokenizer.convert_tokens_to_ids("<lvr4>"), "card": card,
    }}))
    """
)


def _run(root: Path, *args: str) -> str:
    fake_hub = Path(__file__).with_name("fake_hub.py")
    completed = subprocess.run([sys.executable, str(fake_hub), "--root", str(root), *args], env=fake_hub_env(root),
                               cwd=root, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed.stdout


def test_push_to_hub_publishes_a_loadable_model_with_its_card(tmp_path, tiny_lavit_pair):
    data = tmp_path / "data"
    synthetic_lavit_dataset(4, D, teacher_grids=((2, 2), (3, 5))).to_parquet(data / "data" / "train-00000-of-00001.parquet")
    synthetic_lavit_dataset(2, D, seed=1).to_parquet(data / "data" / "test-00000-of-00001.parquet")
    student = tmp_path / "student"
    tiny_lavit_pair[0].save_pretrained(student)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(student), "dataset_name_or_path": str(data), "output_dir": str(tmp_path / "out"),
        "stage_schedule": "two_stage", "stage1_steps": 1, "stage2_steps": 2, "min_pixels": 3136, "max_pixels": 50176,
        "activation_checkpointing": False, "gradient_accumulation_steps": 1, "per_device_train_batch_size": 2,
        "logging_steps": 1, "report_to": "none", "disable_tqdm": True, "use_cpu": True, "save_strategy": "no",
        "eval_split": "test", "eval_strategy": "no", "hub_model_id": REPO_ID,
    }))
    # `lavit train`'s module entry point (`-m trainer.train --config ...` does not pass fake_hub.py's own parser).
    _run(tmp_path, "-c", f"from trainer.train import cli; cli(['--config', {str(config)!r}, '--push_to_hub', 'true'])")
    lines = [line for line in _run(tmp_path, "-c", LOAD_BACK).splitlines() if line.startswith("RESULT ")]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["class"] == "LaViTForConditionalGeneration" and result["stage"] == 2
    assert result["latent"] == tiny_lavit_pair[0].config.latent_token_ids[-1]
    card = result["card"]
    for text in ("Aligning Latent Visual Thoughts", "Stage 1: bottleneck", "Stage 2: joint", "| step | loss | loss_ce",
                 "## Evaluation results", "eval_loss_vtop", "gradient_accumulation_steps", REPO_ID):
        assert text in card, text
