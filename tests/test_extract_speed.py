"""The extraction's speed-ups change no value.

- The teacher's repeated blocks compiled in place (`TeacherExtractor(compile_blocks=True)`, `lavit extract
  --compile_teacher`): the attention capture and the V_top hook run eagerly between the compiled graphs, see every
  selected layer exactly once per forward, and the values equal the eager teacher's.
- `extract_batches`: each batch is encoded in a background thread while the teacher runs the one before.
"""

import copy
import threading

import pytest
import torch
from PIL import Image
from torch import is_tensor
from torch._dynamo.backends.common import aot_autograd

from datasets_scripts import extract as extract_module
from datasets_scripts.teacher import (
    AttentionRowCapture,
    ExtractionSettings,
    GenerationSettings,
    TeacherError,
    TeacherExtractor,
)
from lavit_hf.arguments import parse_with_config
from lavit_hf.attention import use_packed_vision_attention


# Images of different sizes and responses of different lengths: the first batch is padded, the second has another
# shape (so the compiled blocks recompile for it).
SAMPLES = [
    ((140, 84), "Where is it?", "Top left. It is small!"),
    ((56, 56), "What colour is the large square in the middle?", "It is grey.\nA little brighter than the rest."),
    ((84, 112), "Count the dots.", "Three dots."),
]


class GraphCounter:
    """A `torch.compile` backend that runs the graphs dynamo and AOTAutograd capture as they are and counts them and
    their calls. Tracing, graph breaks and guards are those of any backend, and the kernels stay eager, so that
    compiling a tiny teacher on the CPU takes seconds instead of inductor's minute (the GPU bench compares inductor's
    values). Like inductor's graphs, these refuse to run under vmap (on batched tensors)."""

    def __init__(self):
        self.graphs = 0
        self.calls = 0
        self.backend = aot_autograd(fw_compiler=self.compile_graph, bw_compiler=self.compile_graph)

    def __call__(self, graph_module, example_inputs):
        return self.backend(graph_module, example_inputs)

    def compile_graph(self, graph_module, example_inputs):
        self.graphs += 1

        def run(args):
            if any(is_tensor(arg) and "Batched" in str(torch._C._dispatch_keys(arg)) for arg in args):
                raise RuntimeError("a compiled graph ran on batched tensors (under vmap)")
            self.calls += 1
            return graph_module(*args)

        run._boxed_call = True  # AOTAutograd's calling convention: one list of arguments
        return run


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy())


def batches():
    images = [noise_image(w, h, seed) for seed, ((w, h), _, _) in enumerate(SAMPLES)]
    questions = [question for _, question, _ in SAMPLES]
    responses = [response for _, _, response in SAMPLES]
    return [(images[:2], questions[:2], responses[:2]), (images[2:], questions[2:], responses[2:])]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_compiled_teacher_extracts_what_the_eager_teacher_extracts(family, tiny_teachers, monkeypatch):
    """Qwen2.5-VL (packed vision windows, causal text attention) and Gemma 3 (SigLIP tower, sliding windows and
    bidirectional image blocks in the masks): both trajectories, per step too, and V_top, within 1e-4; the compiled
    graphs ran, and the capture saw each selected layer once per forward."""
    model, processor = tiny_teachers(family)
    model = copy.deepcopy(model).float()
    if family == "qwen2_5_vl":
        use_packed_vision_attention(model)  # as `lavit extract` loads it
    # One of the two layers is read: the compiled blocks run with and without the capture's graph break.
    settings = ExtractionSettings(
        methods=("attention", "gradient"), attention_layers=[-1], split_steps="sentence", gradient_batch_size=4,
        row_chunk=5,
    )  # fmt: skip
    eager = TeacherExtractor(copy.deepcopy(model), processor, settings)
    counter = GraphCounter()
    compiled = TeacherExtractor(model, processor, settings, compile_blocks=True, compile_options={"backend": counter})
    observed = []
    mean = AttentionRowCapture.mean

    def recording_mean(capture):
        observed.append(list(capture.observed))
        return mean(capture)

    monkeypatch.setattr(AttentionRowCapture, "mean", recording_mean)
    for images, questions, responses in batches():
        expected = eager.extract_batch(images, questions, responses)
        calls = counter.calls
        outputs = compiled.extract_batch(images, questions, responses)
        assert counter.calls > calls  # the compiled graphs computed this forward
        for out, reference in zip(outputs, expected, strict=True):
            for method in ("attention", "gradient"):
                torch.testing.assert_close(out.trajectories[method], reference.trajectories[method], atol=1e-4, rtol=0)
                torch.testing.assert_close(
                    out.step_trajectories[method], reference.step_trajectories[method], atol=1e-4, rtol=0
                )
            torch.testing.assert_close(out.vtop_tokens, reference.vtop_tokens, atol=1e-4, rtol=1e-4)
    assert counter.graphs > 0
    assert observed == [[1]] * 4  # eager and compiled, two forwards each


def test_compiled_teacher_generates_eagerly(tiny_teacher_pair):
    """Generation with a dynamic cache runs the compiled blocks eagerly (no graph is compiled for its decoding
    steps) and writes the eager teacher's tokens."""
    model, processor = tiny_teacher_pair
    images, questions, _ = batches()[0]
    settings = GenerationSettings(max_new_tokens=4, batch_size=2)
    eager = TeacherExtractor(copy.deepcopy(model), processor, ExtractionSettings(), settings)
    counter = GraphCounter()
    compiled = TeacherExtractor(
        copy.deepcopy(model), processor, ExtractionSettings(), settings, compile_blocks=True,
        compile_options={"backend": counter},
    )  # fmt: skip
    assert compiled.generate(images, questions) == eager.generate(images, questions)
    assert counter.graphs == 0


def test_the_capture_refuses_a_layer_seen_twice_or_never():
    """Each selected layer must be observed exactly once per forward: a second call (a layer run twice) and a
    missing one are errors, never a silent overwrite or a mean over fewer layers."""
    first, second = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    capture = AttentionRowCapture({first: 0, second: 1}, [torch.arange(3, 5)], [torch.tensor([0, 1])], row_chunk=4)
    query, key = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8)
    capture.observe(first, query, key, None, None, is_causal=True)
    with pytest.raises(TeacherError, match="saw no attention call in layers \\[1\\]"):
        capture.mean()
    with pytest.raises(TeacherError, match="saw layer 0 twice"):
        capture.observe(first, query, key, None, None, is_causal=True)
    capture.observe(second, query, key, None, None, is_causal=True)
    (weights,) = capture.mean()
    assert weights.shape == (2, 2) and weights.device.type == "cpu"


@pytest.mark.parametrize(
    ("flag", "device", "expected"),
    [([], "cpu", False), (["--compile_teacher", "true"], "cpu", True), (["--compile_teacher", "false"], "cuda", False)],
)
def test_compile_teacher_reaches_the_extractor(flag, device, expected, tiny_teacher_dir, tmp_path, monkeypatch):
    """`--compile_teacher` (unset: on for a CUDA device only) decides whether the extractor compiles the teacher."""
    seen = {}

    class Stop(Exception):
        pass

    def recording_extractor(*args, compile_blocks=False, **kwargs):
        seen["compile_blocks"] = compile_blocks
        raise Stop

    monkeypatch.setattr(extract_module, "TeacherExtractor", recording_extractor)
    monkeypatch.setattr(extract_module, "load_teacher", lambda path, device, dtype: None)
    source = tmp_path / "source.jsonl"
    source.write_text('{"image": "missing.png", "question": "What?", "answer": "A thing."}\n')
    argv = ["--source", str(source), "--teacher", str(tiny_teacher_dir), "--output_dir", str(tmp_path / "out"),
            "--device", device, *flag]  # fmt: skip
    with pytest.raises(Stop):
        extract_module.main(parse_with_config(extract_module.make_parser(), argv))
    assert seen == {"compile_blocks": expected}


def test_extract_batches_encodes_the_next_batch_while_the_teacher_runs(tiny_teacher_pair, monkeypatch):
    """The next batch's encoding starts before the current forward ends (the first forward waits for it), a batch
    that fails yields its error while the others still run, and the outputs are `extract_batch`'s."""
    model, processor = tiny_teacher_pair
    extractor = TeacherExtractor(copy.deepcopy(model), processor, ExtractionSettings(attention_layers=[-1]))
    good = batches()
    failing = (good[1][0], good[1][1], [""])  # an empty response: encoding refuses it
    expected = [extractor.extract_batch(*batch) for batch in good]
    encode, forward = extractor.encode_batch, extractor._forward
    second_encoding, forwards = threading.Event(), []

    def recording_encode(images, questions, responses):
        if questions == good[1][1] and responses == good[1][2]:
            second_encoding.set()
        return encode(images, questions, responses)

    def waiting_forward(*args):
        if not forwards:
            assert second_encoding.wait(timeout=60), "the second batch was not encoded during the first forward"
        forwards.append(threading.current_thread() is threading.main_thread())
        return forward(*args)

    monkeypatch.setattr(extractor, "encode_batch", recording_encode)
    monkeypatch.setattr(extractor, "_forward", waiting_forward)
    results = list(extractor.extract_batches([good[0], good[1], failing, good[0]]))
    assert forwards == [True, True, True]  # the forwards run on the calling thread; the failing batch has none
    assert isinstance(results[2], TeacherError) and "empty teacher response" in str(results[2])
    for outputs, reference in zip([results[0], results[1], results[3]], [*expected, expected[0]], strict=True):
        for out, ref in zip(outputs, reference, strict=True):
            torch.testing.assert_close(out.trajectories["attention"], ref.trajectories["attention"], atol=0, rtol=0)
            torch.testing.assert_close(out.vtop_tokens, ref.vtop_tokens, atol=0, rtol=0)
