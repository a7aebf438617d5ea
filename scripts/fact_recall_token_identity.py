"""Where the frozen all-MiniLM-L6-v2 carries the animal of a fact-recall question, and where the fact's.

    python scripts/fact_recall_token_identity.py

On test documents of ``configs/plugin_minilm_fact_recall.yaml`` the encoder runs segment by segment (128 tokens,
as the plugin sees it) and the LayerNorm'd top-layer states, centred on their mean over all positions, are compared
by cosine: the question's animal ("... the otter ?") with each fact's animal ("the otter is jade"), and the
question's last token "?" and animal with each fact's code word. A key written at one position and a query read at
another match easily only where the first pair of columns stands well above the second.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModel

from sdapm_hf.tasks import build_task
from sdapm_hf.tasks.text import CODE_WORDS, ENTITIES, default_tokenizer_path, load_tokenizer

TASK = dict(num_segments=8, segment_length=128, num_facts=4, fact_segments=2, num_labels=8, train_size=0,
            validation_size=0, test_size=256)
DOCUMENTS = 64


def states(model, ids: torch.Tensor, segment: int) -> torch.Tensor:
    """(B, T, D) top-layer states, each segment encoded on its own, LayerNorm'd."""
    pieces = [model(input_ids=ids[:, s : s + segment]).last_hidden_state for s in range(0, ids.shape[1], segment)]
    hidden = torch.cat(pieces, 1)
    return F.layer_norm(hidden, hidden.shape[-1:])


def main() -> None:
    torch.set_num_threads(1)
    tokenizer = load_tokenizer()
    model = AutoModel.from_pretrained(default_tokenizer_path()).eval()
    test = build_task("fact_recall", seed=0, **TASK)["test"].select(range(DOCUMENTS))
    ids = torch.tensor(test["input_ids"])
    with torch.no_grad():
        x = states(model, ids, TASK["segment_length"])
    x = F.normalize(x - x.mean((0, 1)), dim=-1)
    animals = set(tokenizer.convert_tokens_to_ids(list(ENTITIES)))
    codes = set(tokenizer.convert_tokens_to_ids(list(CODE_WORDS)))
    pairs = {"question animal, fact animal": ([], []), '"?", fact code word': ([], []),
             "question animal, fact code word": ([], [])}
    facts_end = TASK["fact_segments"] * TASK["segment_length"]
    for b, row in enumerate(ids.tolist()):
        asked = max(i for i in range(len(row)) if row[i] in animals)
        fact_animals = [i for i in range(facts_end) if row[i] in animals]
        fact_codes = [i for i in range(facts_end) if row[i] in codes]
        for animal, code in zip(fact_animals, fact_codes, strict=True):
            same = int(row[animal] != row[asked])  # 0: the asked fact, 1: another
            pairs["question animal, fact animal"][same].append((x[b, asked] @ x[b, animal]).item())
            pairs['"?", fact code word'][same].append((x[b, -1] @ x[b, code]).item())
            pairs["question animal, fact code word"][same].append((x[b, asked] @ x[b, code]).item())
    print("| states compared | the asked fact | another fact |\n|---|---|---|")
    for name, (asked_fact, other) in pairs.items():
        print(f"| {name} | {sum(asked_fact) / len(asked_fact):.3f} | {sum(other) / len(other):.3f} |")


if __name__ == "__main__":
    main()
