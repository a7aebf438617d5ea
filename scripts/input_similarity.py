"""How alike a frozen base's states at one layer look to the memory, under its two input norms.

For each base and layer: the largest and the median channel magnitude (mean |h| over positions) and the mean
cosine between the positions of a segment after the memory's input norm, ``"layer"`` (LayerNorm) or ``"robust"``
(``robust_squash`` then LayerNorm), over the first test segments of the essays (each pair of positions once)::

    python scripts/input_similarity.py --bases smollm2-135m-instruct gemma3-270m --layers 2 8 \\
        --out docs/runs/input_similarity.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sdapm_hf.injection import robust_squash
from sdapm_hf.pretrained import model_path
from sdapm_hf.reporting import command_line
from sdapm_hf.tasks.haystack import HaystackCorpus


def mean_cosine(states: torch.Tensor) -> float:
    """Mean cosine between the LayerNorm'd rows of ``states`` (T, D), each pair of rows once."""
    unit = torch.nn.functional.normalize(torch.nn.functional.layer_norm(states, states.shape[-1:]), dim=-1)
    cosines = unit @ unit.T
    return cosines[~torch.eye(len(states), dtype=torch.bool)].mean().item()


def measure(name: str, layers: list[int], segments: int) -> dict[str, dict[str, float]]:
    folder = model_path(name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    corpus = HaystackCorpus(tokenizer)
    ids = torch.as_tensor(corpus.segments("test")[:segments])
    with torch.no_grad():
        hidden = base(input_ids=ids, output_hidden_states=True).hidden_states
    skip = len(corpus.prefix)  # a <bos> position is not text
    results = {}
    for layer in layers:
        states = hidden[layer + 1][:, skip:]  # (S, T, D), the output of decoder layer `layer`
        magnitude = states.abs().mean(dim=(0, 1))
        results[str(layer)] = {
            "largest_channel": magnitude.max().item(),
            "median_channel": magnitude.median().item(),
            "cosine_layer_norm": sum(mean_cosine(s) for s in states) / len(states),
            "cosine_robust": sum(mean_cosine(robust_squash(s)) for s in states) / len(states),
        }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--segments", type=int, default=4, help="test segments of 256 tokens")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    results = {name: measure(name, args.layers, args.segments) for name in args.bases}
    for name, by_layer in results.items():
        for layer, row in by_layer.items():
            print(f"{name} layer {layer}: channels largest {row['largest_channel']:.1f} median "
                  f"{row['median_channel']:.2f}; mean cosine between positions: LayerNorm "
                  f"{row['cosine_layer_norm']:.3f}, robust {row['cosine_robust']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = command_line(sys.argv[1:] if argv is None else argv, "scripts/input_similarity.py")
    args.out.write_text(json.dumps({"command": command, "bases": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
