"""How well a random frozen Llama's top-layer state identifies its token across contexts.

    python scripts/base_token_identity.py

For each setting, 16 tokens each end two 64-token inputs (random tokens before it, or zeros); the cosine between
the LayerNorm'd top-layer states of the same token in the two contexts is compared with that of different tokens.
A memory that must match a query to a key written in another context needs the first to stand well above the second.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

SETTINGS = [(64, 0.02), (64, 0.1), (64, 0.2), (128, 0.02), (256, 0.02)]  # (hidden size, initializer std)


def identity(hidden: int, std: float, seed: int = 0) -> tuple[float, float]:
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "llama", hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=1024, max_position_embeddings=64, initializer_range=std,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    token = torch.randint(1, 512, (16, 1), generator=g)
    contexts = (torch.randint(1, 1024, (16, 63), generator=g), torch.zeros(16, 63, dtype=torch.long))
    seen = []
    top = model.model.layers[-1]
    hook = top.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        for context in contexts:
            model(torch.cat([context, token], 1))
    hook.remove()
    a, b = (F.layer_norm(h[:, -1], (hidden,)) for h in seen)
    return F.cosine_similarity(a, b).mean().item(), F.cosine_similarity(a, b.roll(1, 0)).mean().item()


def main() -> None:
    torch.set_num_threads(1)
    print("| hidden | init std | same token, other context | different tokens |\n|---|---|---|---|")
    for hidden, std in SETTINGS:
        same, other = identity(hidden, std)
        print(f"| {hidden} | {std} | {same:.3f} | {other:.3f} |")


if __name__ == "__main__":
    main()
