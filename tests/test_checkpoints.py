"""Saving, loading and converting checkpoints: Auto classes, remote code, Qwen2.5-VL conversion, make-tiny."""

import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from lavit_cli.cli import main as lavit_main
from lavit_hf import LaViTForConditionalGeneration


def text_inputs(processor, text="The quick brown fox"):
    return processor(text=[text], return_tensors="pt")


def test_remote_code_round_trip_without_the_package(tiny_lavit_pair, tmp_path):
    model, processor = tiny_lavit_pair
    model.save_pretrained(tmp_path / "ckpt")
    assert {"modeling_lavit.py", "configuration_lavit.py", "config.json", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "ckpt").iterdir()
    }
    inputs = text_inputs(processor)
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.save({"inputs": dict(inputs), "logits": expected}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["lavit_hf"] = None  # importing lavit_hf now raises ImportError
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        try:
            import lavit_hf
        except ImportError:
            pass
        else:
            raise SystemExit("lavit_hf is importable")
        model = AutoModelForImageTextToText.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        processor = AutoProcessor.from_pretrained({str(tmp_path / "ckpt")!r})
        assert processor.tokenizer.convert_tokens_to_ids("<lvr4>") == model.config.latent_token_ids[-1]
        saved = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            logits = model.eval()(**saved["inputs"]).logits
        assert torch.equal(logits, saved["logits"]), (logits - saved["logits"]).abs().max()
        print("REMOTE-OK")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "REMOTE-OK" in result.stdout, result.stderr[-3000:]


def test_installed_package_needs_no_remote_code(tiny_lavit_pair, tmp_path):
    model, processor = tiny_lavit_pair
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(loaded) is LaViTForConditionalGeneration
    assert loaded.config.latent_token_ids == model.config.latent_token_ids
    inputs = text_inputs(processor)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
    assert AutoProcessor.from_pretrained(tmp_path).tokenizer.convert_tokens_to_ids("<lvr1>") == model.config.latent_token_ids[0]


def test_qwen_checkpoint_converts_with_every_weight(tiny_teacher_pair, tiny_teacher_dir):
    qwen, qwen_processor = tiny_teacher_pair
    student, processor = LaViTForConditionalGeneration.from_qwen2_5_vl(
        tiny_teacher_dir, num_latent_tokens=4, teacher_hidden_size=32
    )
    # from_qwen2_5_vl raises on any missing or unexpected key; check the weights really arrived.
    qwen_state = qwen.state_dict()
    student_state = student.state_dict()
    for key, value in qwen_state.items():
        if key.endswith(("embed_tokens.weight", "lm_head.weight")):
            assert torch.equal(student_state[key][: value.shape[0]], value), key
        else:
            assert torch.equal(student_state[key], value), key
    inputs = text_inputs(processor)
    with torch.no_grad():
        before = qwen(**inputs).logits
        after = student(**inputs).logits
    assert torch.equal(after[..., : before.shape[-1]], before)
    # The latent rows are initialised (near the mean embedding), not left at random init.
    rows = student.get_input_embeddings().weight[student.config.latent_token_ids]
    mean = qwen.get_input_embeddings().weight.mean(0)
    assert (rows - mean).abs().max() < 0.05 * qwen.get_input_embeddings().weight.std()


def test_conversion_refuses_a_checkpoint_with_missing_weights(tiny_teacher_pair, tmp_path):
    qwen, processor = tiny_teacher_pair
    broken = {k: v for k, v in qwen.state_dict().items() if "layers.1." not in k}
    qwen.save_pretrained(tmp_path, state_dict=broken)
    processor.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="left weights unloaded: missing"):
        LaViTForConditionalGeneration.from_qwen2_5_vl(tmp_path, teacher_hidden_size=32)


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_make_tiny_cli(kind, tmp_path):
    lavit_main(["make-tiny", "--kind", kind, "--out", str(tmp_path)])
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    expected = "LaViTForConditionalGeneration" if kind == "student" else "Qwen2_5_VLForConditionalGeneration"
    assert type(model).__name__ == expected
    assert len(AutoProcessor.from_pretrained(tmp_path).tokenizer) >= 151669


def test_a_reloaded_checkpoint_finds_its_latent_tokens(tiny_lavit_pair, tmp_path):
    model, processor = tiny_lavit_pair
    model.save_pretrained(tmp_path)
    loaded = LaViTForConditionalGeneration.from_pretrained(tmp_path)
    ids = processor(text=["a <lvr1><lvr2><lvr3><lvr4> b"], return_tensors="pt")["input_ids"]
    positions = loaded.token_layout(ids, need_latents=True).latent_positions
    assert positions.tolist() == model.token_layout(ids, need_latents=True).latent_positions.tolist()
    assert loaded.model.latent_ids(ids.device).tolist() == model.config.latent_token_ids
