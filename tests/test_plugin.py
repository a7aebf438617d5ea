"""The memory plugged into frozen causal LMs: unchanged logits at start, segments, generate, checkpoints."""

import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    PhiConfig,
    Qwen2Config,
)

from sdapm_hf import DNCSDAPMConfig, DNCSDAPMForCausalLM
from sdapm_hf.injection import decoder_layers

COMMON = dict(vocab_size=64, max_position_embeddings=32, bos_token_id=1, eos_token_id=2, pad_token_id=0)
DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, **COMMON)
BASES = {
    "llama": lambda: LlamaConfig(num_key_value_heads=2, **DECODER),
    "qwen2": lambda: Qwen2Config(num_key_value_heads=2, **DECODER),
    "mistral": lambda: MistralConfig(num_key_value_heads=2, **DECODER),
    "gpt2": lambda: GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=32, **{**COMMON, "max_position_embeddings": 32}),
    "gpt_neox": lambda: GPTNeoXConfig(**DECODER),
    "phi": lambda: PhiConfig(**DECODER),
}
MEMORY = dict(memory_slots=4, word_size=8, controller_size=16)
# The per-token recurrence with clock keys and learned consolidation (the defaults are the chunked plug's).
PER_TOKEN = dict(chunk_size=None, clock_keys=True, consolidation="learned")


def tiny_base(arch: str = "llama", seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(BASES[arch]()).eval()


def plugged(arch: str = "llama", open_memory: bool = True, **settings) -> DNCSDAPMForCausalLM:
    """A plugin whose memory already changes the outputs (its zero-initialised projection set at random)."""
    model = DNCSDAPMForCausalLM.from_base(tiny_base(arch), **{**MEMORY, **PER_TOKEN, **settings})
    if open_memory:
        torch.manual_seed(1)
        torch.nn.init.normal_(model.model.memory.output.weight, std=0.5)
    return model


def ids(batch=2, length=12, seed=0):
    return torch.randint(3, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", sorted(BASES))
def test_untrained_plugin_keeps_the_base_and_trains_only_the_memory(arch):
    base = tiny_base(arch)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    x = ids()
    with torch.no_grad():
        reference = base(x).logits
    model = DNCSDAPMForCausalLM.from_base(base, **MEMORY)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # weights untouched
    out = model(input_ids=x, labels=x)
    assert (out.logits - reference).abs().max() <= 1e-6
    model.train()
    assert not base.training  # frozen: dropout stays off
    out.loss.backward()
    assert all(p.grad is None for p in base.parameters())
    assert model.model.memory.output.weight.grad.abs().sum() > 0
    generated = model.generate(x[:, :5], max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape == (2, 9)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_cached_generation_equals_uncached_across_segments(arch):
    model = plugged(arch, segment_length=6)  # the prompt and the new tokens cross three segment boundaries
    prompt = ids(length=8)
    cached = model.generate(prompt, max_new_tokens=9, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=9, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    with torch.no_grad():  # and the last step's memory equals one pass over the whole text
        whole = model(input_ids=cached[:, :-1])
        step = model(input_ids=cached[:, :16], use_cache=True)
        for i in range(16, cached.shape[1] - 1):
            step = model(input_ids=cached[:, i : i + 1], cache=step.cache, use_cache=True)
    assert (step.logits[:, -1] - whole.logits[:, -1]).abs().max() <= 1e-4


def test_the_memory_can_read_the_base_embeddings_and_still_add_at_its_layer():
    model = plugged(segment_length=6, read_from="embeddings")
    x = ids(length=14)
    seen = []
    hook = model.model.memory.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        out = model(input_ids=x)
    hook.remove()
    embeddings = model.get_input_embeddings()(x)
    assert torch.equal(torch.cat(seen, 1), embeddings)  # segment by segment, the token embeddings themselves
    model.config.read_from = "layer"
    with torch.no_grad():  # the same weights reading the layer's output give other logits
        assert (out.logits - model(input_ids=x).logits).abs().max() > 1e-3
    model.config.read_from = "embeddings"
    prompt = ids(length=8)
    cached = model.generate(prompt, max_new_tokens=7, do_sample=False, use_cache=True)
    assert torch.equal(cached, model.generate(prompt, max_new_tokens=7, do_sample=False, use_cache=False))


def test_beam_search_reorders_the_memory_with_the_beams():
    model = plugged(segment_length=8)
    prompt = ids(length=5)
    settings = dict(max_new_tokens=6, num_beams=3, do_sample=False, early_stopping=True)
    assert torch.equal(model.generate(prompt, use_cache=True, **settings), model.generate(prompt, use_cache=False, **settings))


def test_left_padding_never_writes_into_memory():
    model = plugged(segment_length=16)
    alone = ids(batch=1, length=5)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), alone], 1)
    batch = torch.cat([padded, ids(batch=1, length=8, seed=5)])
    mask = torch.ones_like(batch)
    mask[0, :3] = 0
    with torch.no_grad():
        single = model(input_ids=alone)
        both = model(input_ids=batch, attention_mask=mask)
    for name, tensor in single.memory_state.items():
        assert torch.allclose(both.memory_state[name][:1], tensor, rtol=1e-4, atol=1e-5), name
    assert (both.logits[0, 3:] - single.logits[0]).abs().max() <= 1e-4
    gen_alone = model.generate(alone, max_new_tokens=5, do_sample=False)
    gen_batch = model.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(gen_batch[0, 3:], gen_alone[0])


def test_long_inputs_run_in_segments_and_the_memory_carries_across_them():
    model = plugged(segment_length=8)
    x = ids(length=24)  # three segments of the base's own window
    changed = x.clone()
    changed[:, 2] = 3  # a token of the first segment
    with torch.no_grad():
        out, out_changed = model(input_ids=x, labels=x), model(input_ids=changed)
        model.model.memory.output.weight.zero_()  # memory closed: segments are independent for the base
        closed, closed_changed = model(input_ids=x), model(input_ids=changed)
    assert out.logits.shape == (2, 24, 64) and torch.isfinite(out.loss)
    assert (out.logits[:, 16:] - out_changed.logits[:, 16:]).abs().max() > 1e-3  # the third segment remembers
    assert torch.equal(closed.logits[:, 16:], closed_changed.logits[:, 16:])
    base = tiny_base()
    with torch.no_grad():
        assert (closed.logits[:, 16:] - base(x[:, 16:]).logits).abs().max() <= 1e-5


def test_segment_longer_than_the_base_window_is_refused():
    with pytest.raises(ValueError, match="segment_length=64 exceeds the base's max_position_embeddings=32"):
        plugged(segment_length=64)(input_ids=ids())


def test_bases_load_without_the_hubs_kernels(tmp_path):
    """transformers would fetch kernels from the Hub at run time (on a GPU, when the base is put in training mode)."""
    from sdapm_hf.training.evaluation import load_base

    tiny_base().save_pretrained(tmp_path / "base")
    assert not load_base(str(tmp_path / "base"), "causal_lm").use_kernels


@pytest.mark.parametrize("mode", ["whole", "adapter"])
def test_checkpoints_load_in_process_and_as_remote_code(tmp_path, clean_python, mode):
    base = tiny_base()
    base.save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    model = DNCSDAPMForCausalLM.from_base(base, save_base_weights=mode == "whole", **MEMORY)
    torch.nn.init.normal_(model.model.memory.output.weight, std=0.5)
    x = ids()
    with torch.no_grad():
        expected = model(input_ids=x).logits
    model.save_pretrained(tmp_path / mode)
    size = (tmp_path / mode / "model.safetensors").stat().st_size
    base_size = (tmp_path / "base" / "model.safetensors").stat().st_size
    assert (size < base_size) == (mode == "adapter"), (size, base_size)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / mode)
    with torch.no_grad():
        assert torch.equal(again(input_ids=x).logits, expected)
    assert not any(p.requires_grad for p in again.model.base.parameters())
    torch.save({"ids": x, "logits": expected}, tmp_path / "expected.pt")
    out = clean_python(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / mode)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            diff = (model(input_ids=expected["ids"]).logits - expected["logits"]).abs().max().item()
        assert diff == 0.0, diff
        print("remote-ok")
        """
    )
    assert "remote-ok" in out


def test_adapter_on_a_base_of_another_hidden_size_fails_clearly(tmp_path):
    model = plugged(base_model_name_or_path="some/base", save_base_weights=False)
    model.save_pretrained(tmp_path)
    wider = AutoModelForCausalLM.from_config(LlamaConfig(**{**DECODER, "hidden_size": 48, "num_key_value_heads": 2}))
    with pytest.raises(ValueError, match="base model's hidden size 48 does not match the memory's hidden_size=32"):
        DNCSDAPMForCausalLM.from_pretrained(tmp_path, base=wider)


def test_adapter_checkpoint_without_a_base_name_is_refused(tmp_path):
    model = plugged(save_base_weights=False)  # a base built from a config has no name or path
    with pytest.raises(ValueError, match="base_model_name_or_path"):
        model.save_pretrained(tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_a_base_without_decoder_layers_is_refused():
    class Flat(torch.nn.Module):
        pass

    base = tiny_base()
    base.model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU()])  # no block stack any more
    with pytest.raises(ValueError, match="cannot inject the memory into LlamaModel"):
        DNCSDAPMForCausalLM.from_base(base, **MEMORY)


def test_the_config_route_equals_from_base():
    base = tiny_base()
    via_base = DNCSDAPMForCausalLM.from_base(base, **MEMORY)
    config = DNCSDAPMConfig(hidden_size=32, text_config=base.config.to_dict(), **MEMORY)
    via_config = DNCSDAPMForCausalLM(config, base).eval()
    assert via_config.config.text_config.model_type == "llama"
    x = ids()
    with torch.no_grad():
        assert torch.equal(via_base(input_ids=x).logits, via_config(input_ids=x).logits)
    with pytest.raises(Exception, match="hidden_size=48 does not match the base model's hidden size 32"):
        DNCSDAPMConfig(hidden_size=48, text_config=base.config.to_dict(), **MEMORY)


def test_a_plugged_memory_writes_predictively_unless_told_otherwise(tmp_path):
    assert DNCSDAPMConfig().predictive_writes is False  # standalone
    plugged_default = DNCSDAPMForCausalLM.from_base(tiny_base(), **MEMORY)
    assert plugged_default.config.predictive_writes is True
    assert plugged_default.model.memory.core.predictive
    off = DNCSDAPMForCausalLM.from_base(tiny_base(), predictive_writes=False, **MEMORY)
    assert not off.model.memory.core.predictive
    off.save_pretrained(tmp_path)  # the resolved value is what a checkpoint keeps
    assert DNCSDAPMConfig.from_pretrained(tmp_path).predictive_writes is False


def test_standalone_generation_carries_the_recurrent_state():
    torch.manual_seed(0)
    model = DNCSDAPMForCausalLM(DNCSDAPMConfig(vocab_size=12, hidden_size=16, **MEMORY)).eval()
    prompt = torch.randint(1, 12, (2, 6), generator=torch.Generator().manual_seed(0))
    for beams in (1, 3):
        settings = dict(max_new_tokens=8, min_new_tokens=8, num_beams=beams, do_sample=False)
        cached = model.generate(prompt, use_cache=True, **settings)
        assert torch.equal(cached, model.generate(prompt, use_cache=False, **settings))
        assert cached.shape == (2, 14)


def test_the_robust_input_norm_keeps_positions_apart_under_a_massive_channel():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from input_similarity import mean_cosine as _mean_cosine

    from sdapm_hf.injection import robust_squash

    states = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    states[:, 7] = 900.0 + torch.randn(64, generator=torch.Generator().manual_seed(1))  # one huge, constant channel
    assert _mean_cosine(states) > 0.9  # a LayerNorm alone: every position nearly the same
    squashed = robust_squash(states)
    assert _mean_cosine(squashed) < 0.3  # the massive channel now weighs as a few ordinary ones
    assert squashed.abs().max() <= 8.0
    median = states.abs().median(dim=-1, keepdim=True).values
    ordinary = states.abs() <= 3 * median  # channels of the median's order pass nearly unchanged, up to the scale
    assert ((squashed * median - states).abs() <= 0.05 * states.abs())[ordinary].all()


def test_a_plug_with_the_robust_input_norm_starts_as_the_base_and_reads_differently():
    base, x = tiny_base(), ids()
    with torch.no_grad():
        reference = base(x).logits
        robust = DNCSDAPMForCausalLM.from_base(base, input_norm="robust", **MEMORY)
        assert torch.equal(robust(input_ids=x).logits, reference)
        layer = plugged()
        robust = plugged(input_norm="robust")
        assert not torch.allclose(layer(input_ids=x).logits, robust(input_ids=x).logits)
    with pytest.raises(Exception, match="input_norm must be one of"):
        DNCSDAPMForCausalLM.from_base(base, input_norm="batch", **MEMORY)


def test_the_median_output_scale_multiplies_the_memorys_addition_by_the_streams_median_magnitude():
    base, x = tiny_base(), ids()
    with torch.no_grad():
        h = base(x, output_hidden_states=True).hidden_states[1]  # the first layer's output, without the memory
        deltas = {}
        for rule in ("rms", "median"):
            model = plugged(inject_layer=0, read_layer=0, output_scale=rule)
            seen = []  # the first layer's output with the memory's addition (this hook runs after the plug's)
            first = decoder_layers(model.model.base, base.config.num_hidden_layers)[0]
            handle = first.register_forward_hook(
                lambda module, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
            model(input_ids=x)
            handle.remove()
            deltas[rule] = seen[0] - h
    rms = h.pow(2).mean(-1, keepdim=True).sqrt()
    median = h.abs().median(-1, keepdim=True).values
    assert deltas["rms"].abs().amax() > 1e-3  # the memory changes the stream
    torch.testing.assert_close(deltas["median"] * rms, deltas["rms"] * median, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(deltas["median"], deltas["rms"])
    with pytest.raises(Exception, match="output_scale must be one of"):
        plugged(output_scale="mean")
