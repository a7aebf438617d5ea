"""The CUDA path: the memory and the plugged model compute on a GPU what they compute on the CPU, train there, and
generate with the KV cache there. Skipped where no GPU is at hand (CI has none)."""

import copy
import json

import pytest
import torch

from sdapm_hf import DNCSDAPMForCausalLM
from sdapm_hf.training.loop import train

from test_plugin import MEMORY, ids, plugged, tiny_base
from test_training import experiment, isolated_cache  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SETTINGS = {
    "chunked, sparse reads": dict(segment_length=8, chunk_size=4, clock_keys=False, consolidation="auto", read_top_k=2,
                                   read_candidates=3),
    "per token, links": dict(segment_length=8, chunk_size=None, clock_keys=True, consolidation="learned",
                             temporal_links=True),
}


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 matrix products would make the GPU's floats differ from the CPU's by more than rounding."""
    allowed = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = allowed


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_plugged_model_computes_on_the_gpu_what_it_computes_on_the_cpu(name):
    model = plugged(memory_slots=4, bypass_dropout=0.0, **SETTINGS[name]).train()  # cuDNN's LSTM backward needs train
    gpu = copy.deepcopy(model).cuda()
    x = ids(batch=2, length=24)  # three segments: the memory fills and consolidates
    cpu_out, gpu_out = model(input_ids=x, labels=x), gpu(input_ids=x.cuda(), labels=x.cuda())
    cpu_out.loss.backward()
    gpu_out.loss.backward()
    torch.testing.assert_close(gpu_out.logits.cpu(), cpu_out.logits, atol=1e-4, rtol=1e-4)
    for (key, p), q in zip(model.named_parameters(), gpu.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad.cpu(), p.grad, atol=1e-4, rtol=1e-3, msg=key)


def test_generation_with_the_cache_on_the_gpu_is_the_uncached_model_across_a_segment_boundary():
    model = plugged(**SETTINGS["chunked, sparse reads"]).cuda().eval()
    prompt = ids(batch=1, length=6).cuda()
    out = model.generate(prompt, max_new_tokens=6, do_sample=False)  # crosses the boundary at 8 tokens
    with torch.no_grad():
        logits = model(input_ids=out[:, :-1]).logits
    assert torch.equal(logits[:, prompt.shape[1] - 1 :].argmax(-1), out[:, prompt.shape[1] :])


def test_a_bf16_plugged_model_runs_forward_and_backward_on_the_gpu():
    model = DNCSDAPMForCausalLM.from_base(tiny_base().to(torch.bfloat16), segment_length=8, **MEMORY).cuda()
    x = ids(batch=2, length=16).cuda()
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_a_training_run_uses_the_gpu_and_learns(tmp_path):
    torch.cuda.reset_peak_memory_stats()
    metrics = train(experiment(tmp_path, "cuda", max_steps=40, eval_every=40, save_every=40, learning_rate=0.01))
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "cuda" / "log.jsonl").read_text().splitlines())
              if "loss" in r]
    assert metrics["steps"] == 40 and torch.cuda.max_memory_allocated() > 0
    assert sum(losses[-5:]) < sum(losses[:5])
