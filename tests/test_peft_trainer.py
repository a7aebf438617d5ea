"""PEFT (LoRA on the frozen base, the memory fully trained) and Trainer on a plugged model."""

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Trainer, TrainingArguments

from sdapm_hf import DNCSDAPMForCausalLM
from sdapm_hf.metrics import causal_lm_metrics
from sdapm_hf.tasks import build_task, pad_collate

from test_plugin import MEMORY, ids, plugged, tiny_base

LORA = dict(r=4, lora_alpha=8, target_modules=r".*model\.base\..*\.self_attn\.(q_proj|v_proj)", modules_to_save=["memory"])


def test_lora_on_the_base_with_the_memory_saved_alongside(tmp_path):
    model = get_peft_model(plugged(segment_length=8), LoraConfig(task_type="CAUSAL_LM", **LORA))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in name for name in trainable) and any(".memory.modules_to_save." in name for name in trainable)
    assert not any("mlp" in name or "embed" in name for name in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = ids(length=16)
    model.train()
    losses = []
    for _ in range(5):
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=x).logits
    model.save_pretrained(tmp_path)
    fresh = plugged(segment_length=8)  # the same frozen base, the memory as it was before training
    loaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        assert (loaded(input_ids=x).logits - expected).abs().max() <= 1e-6
    merged = loaded.merge_and_unload()
    assert type(merged) is DNCSDAPMForCausalLM
    with torch.no_grad():
        assert (merged(input_ids=x).logits - expected).abs().max() <= 1e-5
    assert merged.generate(x[:, :4], max_new_tokens=3, min_new_tokens=3, do_sample=False).shape == (2, 7)


def test_trainer_trains_and_evaluates_on_a_datasets_task(tmp_path):
    data = build_task("mqar", vocab_size=64, seq_len=24, num_kv_pairs=4, train_size=64, validation_size=16,
                      test_size=16, cache_dir=str(tmp_path / "data"))
    data = data.select_columns(["input_ids", "labels"])
    model = DNCSDAPMForCausalLM.from_base(tiny_base(), segment_length=8, **MEMORY).train()

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=8, per_device_eval_batch_size=8,
        learning_rate=1e-2, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"], data_collator=pad_collate,
        compute_metrics=causal_lm_metrics, preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
    )
    before = model.model.memory.output.weight.detach().clone()
    result = trainer.train()
    metrics = trainer.evaluate()
    assert result.global_step == 4 and np.isfinite(result.training_loss)
    assert 0.0 <= metrics["eval_token_accuracy"] <= 1.0 and np.isfinite(metrics["eval_loss"])
    assert not torch.equal(before, model.model.memory.output.weight)
    assert all(not p.requires_grad for p in model.model.base.parameters())
