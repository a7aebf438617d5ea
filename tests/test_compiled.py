"""The memory's steps through torch.compile: one graph per step (no host reads), the same outputs and gradients as
eager, no recompilation for a new sequence length, eager where the backend fails."""

import copy

import pytest
import torch
from test_model import tiny, tokens

from sdapm_hf import access, act, sdapm_merge
from sdapm_hf import core as core_module
from sdapm_hf.sdapm_state import slot_maps

CHUNKED = dict(chunk_size=4, clock_keys=False, consolidation="auto")


class CountingBackend:
    """A torch.compile backend that runs each graph eagerly and counts the graphs it was given."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        return graph.forward


def failing_backend(graph, example_inputs):
    raise RuntimeError("no compiler here")


def loss_and_grads(model, ids, mask):
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


ACT = dict(act_mode="act", act_max_steps=3)


@pytest.mark.parametrize(("settings", "padded"), [
    ({}, False), (ACT, True), (dict(consolidation="usage", read_top_k=2, read_candidates=3), True), (CHUNKED, False),
    (CHUNKED, True),
], ids=["per-token", "act-padded", "usage-shortlist-padded", "chunked", "chunked-padded"])
def test_each_step_traces_as_one_graph_and_steps_as_eager_does(settings, padded, monkeypatch):
    """On the shape-static paths an accelerator takes (``host_reads_free`` False), a step has no host read of a
    tensor's values: fullgraph=True, which fails on any graph break, traces it. Those paths must step exactly as
    the eager CPU ones (memory filled and consolidated from the fifth step on)."""
    torch._dynamo.reset()
    backend = CountingBackend()
    core = tiny(**settings).model.core()
    chunked = core.chunk_size is not None
    name = "_chunk_piece" if chunked else "step"
    width = core.controller.cell.input_size - core.read_size
    x = torch.randn(3, 12, core.chunk_size or 1, width, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 12, core.chunk_size or 1, dtype=torch.bool)
    if padded:
        mask[1, :4] = False
        mask[2, 7, 0] = False

    def run(step) -> tuple[list[torch.Tensor], object]:
        state, outs = core.initial_state(3, torch.float32, torch.device("cpu")), []
        with torch.no_grad():
            for i in range(12):
                if chunked:  # (x, mask, state, dense)
                    state, out = step(x[:, i], mask[:, i], state, not padded)[:2]
                else:  # (x, state, mask)
                    state, out = step(x[:, i, 0], state, mask[:, i, 0] if padded else None)[:2]
                outs.append(out)
        return outs, state

    eager_outs, eager_state = run(getattr(core, name))
    for module in (access, act, core_module, sdapm_merge):
        monkeypatch.setattr(module, "host_reads_free", lambda t: False)
    traced_outs, traced_state = run(torch.compile(getattr(core, name), backend=backend, fullgraph=True))
    for traced_out, eager_out in zip(traced_outs, eager_outs):
        torch.testing.assert_close(traced_out, eager_out, rtol=1e-4, atol=1e-4)
    states = [eager_state, traced_state]
    assert backend.graphs >= 1
    eager, traced = states[0].access.memory, states[1].access.memory
    assert bool(eager.occupied.all()) and int(eager.rank.max()) > 1  # the memory filled and merged
    # a merge may keep its factor rows in another orthonormal basis: the slots' maps and statistics are what match
    for one, other in zip(slot_maps(eager), slot_maps(traced)):
        torch.testing.assert_close(other, one, rtol=1e-4, atol=1e-4)
    for field in ("mass", "radius", "rank", "usage", "age", "occupied", "read_weights"):
        torch.testing.assert_close(getattr(traced, field), getattr(eager, field), rtol=1e-4, atol=1e-5, msg=field)


@pytest.mark.parametrize(("settings", "padded"), [({}, False), ({}, True), (ACT, True), (CHUNKED, True)],
                         ids=["per-token", "per-token-padded", "act-padded", "chunked-padded"])
def test_compiled_steps_give_eager_outputs_and_gradients(settings, padded):
    eager = tiny(**settings)  # eval: no dropout, whose random draws compiled code makes differently
    compiled = copy.deepcopy(eager).compile_memory(backend="aot_eager")
    ids = tokens(batch=3, length=11)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :3] = 0
    logits, grads = loss_and_grads(eager, ids, mask)
    compiled_logits, compiled_grads = loss_and_grads(compiled, ids, mask)
    torch.testing.assert_close(compiled_logits, logits, rtol=1e-5, atol=1e-5)
    assert compiled_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("settings", [{}, CHUNKED], ids=["per-token", "chunked"])
def test_a_new_sequence_length_does_not_recompile(settings):
    """Inputs that are prefixes of one sequence take the branches (consolidation or not, the ranks a merge needs)
    the first pass took, so only the length differs. A chunked call that ends inside a chunk steps a shorter piece:
    the first two such lengths may compile (the second one with a dynamic length), later ones may not."""
    torch._dynamo.reset()
    backend = CountingBackend()
    model = tiny(**settings).compile_memory(backend=backend)
    ids = tokens(length=32)
    with torch.no_grad():
        for length in (32, 13, 22):
            model(input_ids=ids[:, :length])
        graphs = backend.graphs
        for length in (31, 8, 27, 9):
            model(input_ids=ids[:, :length])
    assert graphs > 0 and backend.graphs == graphs


def test_inductor_compiled_step_matches_eager():
    torch._dynamo.reset()
    eager = tiny()
    compiled = copy.deepcopy(eager).compile_memory()
    ids = tokens(batch=2, length=6)
    mask = torch.ones_like(ids)
    logits, grads = loss_and_grads(eager, ids, mask)
    compiled_logits, compiled_grads = loss_and_grads(compiled, ids, mask)
    torch.testing.assert_close(compiled_logits, logits, rtol=1e-4, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_a_failing_backend_falls_back_to_eager_with_one_warning():
    torch._dynamo.reset()
    eager = tiny()
    compiled = copy.deepcopy(eager).compile_memory(backend=failing_backend)
    ids = tokens()
    with pytest.warns(RuntimeWarning, match="running it eager: .*no compiler here") as caught:
        logits = compiled(input_ids=ids).logits
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    torch.testing.assert_close(logits, eager(input_ids=ids).logits)
    assert compiled.model.core().stepper("step").failure is not None


def test_a_copy_of_a_compiled_model_steps_its_own_weights():
    torch._dynamo.reset()
    model = tiny().compile_memory(backend=CountingBackend())
    ids = tokens()
    model(input_ids=ids)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in moved.model.core().parameters():
            parameter.add_(0.5)
    eager = copy.deepcopy(moved)
    eager.model.core().compile_options = None
    torch.testing.assert_close(moved(input_ids=ids).logits, eager(input_ids=ids).logits)
    assert not torch.allclose(moved(input_ids=ids).logits, model(input_ids=ids).logits)
