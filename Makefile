# mnist-edge: every target works on a fresh clone; `make venv` is implied.
# Variables: PYTHON (interpreter for the venv), EXTRAS (train,export,cpu,serve,scale,dev; use gpu
# instead of cpu on a CUDA machine, openvino for ONNX Runtime's OpenVINO build), DATASET, DEVICE,
# ARGS (extra CLI options).

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  ?= train,export,cpu,serve,scale,dev
DATASET ?= mnist
DEVICE  ?= auto
ARGS    ?=
TRAIN_BENCH_ARGS ?=
INFER_BENCH_ARGS ?=
SERVE_BENCH_ARGS ?=
RAY_BENCH_ARGS ?=
MCU_BENCH_ARGS ?=
WEB_PORT ?= 8000
comma   := ,
# One stamp per set of extras: switching EXTRAS (e.g. to train,export,gpu,dev) reinstalls.
STAMP   := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# The ONNX Runtime builds, one per extra; they share one module folder, so a venv holds one.
ORT_cpu      := onnxruntime
ORT_gpu      := onnxruntime-gpu
ORT_openvino := onnxruntime-openvino
ORT_EXTRA    := $(strip $(foreach e,cpu gpu openvino,$(if $(findstring $(comma)$(e)$(comma),$(comma)$(EXTRAS)$(comma)),$(e))))
# The OpenVINO tests run in a second venv: onnxruntime-openvino cannot share .venv with onnxruntime.
OV_VENV   ?= .venv-openvino
OV_BIN    := $(OV_VENV)/bin
OV_EXTRAS := openvino,serve
OV_STAMP  := $(OV_VENV)/.installed-$(subst $(comma),-,$(OV_EXTRAS))
OV_MODELS := build/openvino-models
OV_TEST_ARGS ?=
OV_BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv data train export bundle parity samples bench test lint format clean distclean web web-deps \
	venv-openvino test-openvino bench-openvino

help: ## Show this help
	@echo "mnist-edge — make targets (a fresh clone needs nothing but python3):"
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'
	@echo "Variables: DATASET=mnist|fashion-mnist  DEVICE=auto|cpu|cuda  ARGS='extra CLI options'"

$(STAMP): pyproject.toml
	$(if $(word 2,$(ORT_EXTRA)),$(error EXTRAS=$(EXTRAS) names $(ORT_EXTRA): pick one ONNX Runtime build, cpu, gpu or openvino))
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# Switching builds: remove the others first (installed together, one's providers vanish).
	$(if $(ORT_EXTRA),@$(BIN)/python -m pip uninstall -y -q $(filter-out $(ORT_$(ORT_EXTRA)),$(ORT_cpu) $(ORT_gpu) $(ORT_openvino)) 2>/dev/null || true)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP) ## Create .venv and install the project (idempotent; quick when done)

data: $(STAMP) ## Download MNIST into data/ (offline mirror when there is no internet)
	$(BIN)/mnist-train --dataset $(DATASET) --prepare-only $(ARGS)

train: $(STAMP) ## Train the reference convnet (15 epochs) -> artifacts/model.pt + report
	$(BIN)/mnist-train --dataset $(DATASET) --device $(DEVICE) $(ARGS)

export: $(STAMP) ## Export artifacts/model.pt -> artifacts/mnist.onnx + mnist.int8.onnx + pixels-in models (validated)
	$(BIN)/mnist-export $(ARGS)

bundle: $(STAMP) ## Copy the validated reference model from artifacts/ into the package (runtime/models/)
	$(BIN)/python -m mnist_edge.export.bundle $(ARGS)

parity: $(STAMP) ## Compare PyTorch, ONNX fp32 and int8 on the full test set
	$(BIN)/mnist-export --parity-only $(ARGS)

.PHONY: c
c: $(STAMP) ## C99 libraries for microcontrollers from the .onnx files -> artifacts/c/fp32, artifacts/c/int8 (validated)
	$(BIN)/mnist-export --c $(ARGS)

samples: $(STAMP) ## Write some test-set digits (and photo-like variants) into images/
	$(BIN)/mnist-samples images $(ARGS)

bench: $(STAMP) ## Benchmarks: training, model-only and end-to-end inference, serving, Ray, Cortex-M -> artifacts/bench.json
	$(BIN)/python bench/bench_train.py $(TRAIN_BENCH_ARGS)
	$(BIN)/python bench/bench_infer.py $(INFER_BENCH_ARGS)
	$(BIN)/python bench/bench_workers.py
	@$(MAKE) --no-print-directory bench-openvino
	@$(MAKE) --no-print-directory venv-mlserver || echo "bench: MLServer peer skipped (pip's message above)"
	$(BIN)/python bench/bench_serve.py $(SERVE_BENCH_ARGS)
	$(BIN)/python bench/serve_profile.py
	$(BIN)/python bench/bench_ray.py $(RAY_BENCH_ARGS)
	@$(MAKE) --no-print-directory bench-mcu

web-deps: web/vendor/ort-wasm-simd-threaded.wasm ## Install the page's onnxruntime-web (npm ci in web/; copies its 3 runtime files to web/vendor/)

web/vendor/ort-wasm-simd-threaded.wasm: web/package.json web/package-lock.json web/copy-runtime.mjs
	cd web && npm ci --no-audit --no-fund

web: $(STAMP) web-deps ## Serve the web page and the models (artifacts/, else the bundled ones) on 127.0.0.1 (WEB_PORT=8000)
	$(BIN)/python -m mnist_edge.tools.webserve --web-dir web --port $(WEB_PORT) $(ARGS)

# No venv stamp here: a GPU machine's own torch and onnxruntime-gpu are used as they are.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
.PHONY: gpu-check
gpu-check: ## CUDA end to end: gpu tests, 15-epoch train, export, mnist-infer, IOBinding -> artifacts/gpu-check.json
	$(GPU_PYTHON) bench/gpu_check.py $(ARGS)

test: $(STAMP) ## Run the test suite, then the OpenVINO tests in .venv-openvino (test-openvino)
	$(BIN)/python -m pytest $(ARGS)
	@$(MAKE) --no-print-directory test-openvino

# .venv-openvino: the project with the `openvino` and `serve` extras and pytest, no torch. Where the
# wheel cannot be installed (no build for this platform or Python), the OpenVINO targets say so and pass.
$(OV_STAMP): pyproject.toml
	@test -x $(OV_BIN)/python || $(PYTHON) -m venv $(OV_VENV)
	$(OV_BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(OV_EXTRAS)]' \
	  'pytest>=8.0' 'pytest-timeout>=2.3'
	@rm -f $(OV_VENV)/.installed*
	@touch $@

venv-openvino: ## Create .venv-openvino (the project on onnxruntime-openvino) for the OpenVINO tests and bench
	@$(MAKE) --no-print-directory $(OV_STAMP) || { \
	  echo "venv-openvino: onnxruntime-openvino cannot be installed here (pip's message above)"; exit 1; }

# Small models for the OpenVINO tests, trained and exported by the main venv (2 epochs, 12k images).
$(OV_MODELS)/mnist.int8.onnx: | $(STAMP)
	$(BIN)/mnist-train --out-dir $(OV_MODELS) --epochs 2 --train-limit 12000 --test-limit 2000 --quiet
	$(BIN)/mnist-export --checkpoint $(OV_MODELS)/model.pt --out-dir $(OV_MODELS) --no-pixels

test-openvino: $(STAMP) ## OpenVINO tests (tests/test_openvino.py) in .venv-openvino, on models made by .venv
	@if $(MAKE) --no-print-directory $(OV_STAMP); then \
	  $(MAKE) --no-print-directory $(OV_MODELS)/mnist.int8.onnx && \
	  MNIST_EDGE_OPENVINO_MODELS=$(OV_MODELS) $(OV_BIN)/python -m pytest tests/test_openvino.py $(OV_TEST_ARGS); \
	else echo "test-openvino: skipped, onnxruntime-openvino cannot be installed here (pip's message above)"; fi

# The docs' examples as a pip user runs them: a venv with `pip install '.[cpu]'` alone (not editable,
# no torch), and one with '.[cpu,serve]' for serving.md, refreshed from the tree each time.
# `make test` runs the same blocks in .venv, the other extras hidden.
CPU_VENV ?= build/venv-cpu
SERVE_VENV ?= build/venv-serve
.PHONY: test-docs-cpu
test-docs-cpu: $(STAMP) ## The docs' examples in an empty folder with a pip install (build/venv-cpu: '.[cpu]'; build/venv-serve: '.[cpu,serve]')
	@test -x $(CPU_VENV)/bin/python || $(PYTHON) -m venv $(CPU_VENV)
	$(CPU_VENV)/bin/python -m pip install --quiet --disable-pip-version-check '.[cpu]'
	$(CPU_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall .
	@test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check '.[cpu,serve]'
	$(SERVE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall .
	MNIST_EDGE_DOCS_CPU_VENV=$(CPU_VENV) MNIST_EDGE_DOCS_SERVE_VENV=$(SERVE_VENV) \
	  $(BIN)/python -m pytest tests/test_docs_run.py $(ARGS)

# The runtime on aarch64 Linux: an arm64 Debian root (debootstrap + qemu-user-static, cached in
# ~/.cache/mnist-edge), the project installed there with '.[cpu,serve]', answers compared with this
# machine's (tests/arm64/run.sh). Needs root; not part of `make test`.
.PHONY: test-arm64
test-arm64: $(STAMP) ## aarch64: mnist-infer, the Python API and mnist-serve in an emulated arm64 Debian, vs x86's answers
	@test -e data/MNIST/raw/t10k-images-idx3-ubyte || $(BIN)/mnist-train --dataset mnist --prepare-only
	HOST_PYTHON=$(BIN)/python tests/arm64/run.sh

bench-openvino: $(STAMP) ## CPU vs OpenVINO provider, fp32 and int8 files, paired (in .venv-openvino) -> artifacts/bench.json
	@if $(MAKE) --no-print-directory $(OV_STAMP); then \
	  $(OV_BIN)/python bench/bench_infer.py --providers-only $(OV_BENCH_ARGS); \
	else echo "bench-openvino: skipped, onnxruntime-openvino cannot be installed here (pip's message above)"; fi

# .venv-mlserver: Seldon MLServer, the peer bench_serve.py measures mnist-serve against (bench/mlserver/).
ML_VENV  ?= .venv-mlserver
ML_STAMP := $(ML_VENV)/.installed
$(ML_STAMP):
	@test -x $(ML_VENV)/bin/python || $(PYTHON) -m venv $(ML_VENV)
	$(ML_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'mlserver>=1.7,<1.8' 'uvloop<0.21' onnxruntime
	@touch $@

.PHONY: venv-mlserver
venv-mlserver: $(ML_STAMP) ## Create .venv-mlserver (Seldon MLServer + onnxruntime) for bench_serve.py's paired figures

# .venv-emx: emx-onnx-cgen, the general ONNX-to-C compiler bench_mcu.py cross-checks our C emitter with.
EMX_VENV  ?= .venv-emx
EMX_STAMP := $(EMX_VENV)/.installed
$(EMX_STAMP):
	@test -x $(EMX_VENV)/bin/python || $(PYTHON) -m venv $(EMX_VENV)
	$(EMX_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'emx-onnx-cgen==1.4.0'
	@touch $@

.PHONY: venv-emx bench-mcu
venv-emx: $(EMX_STAMP) ## Create .venv-emx (emx-onnx-cgen 1.4.0) for bench_mcu.py's cross-check

bench-mcu: $(STAMP) ## Cortex-M on QEMU: flash, RAM, instructions/image, ours and emx-onnx-cgen's -> artifacts/bench.json
	@$(MAKE) --no-print-directory venv-emx || echo "bench-mcu: emx-onnx-cgen skipped (pip's message above)"
	$(BIN)/python bench/bench_mcu.py --emx-cgen $(EMX_VENV)/bin/emx-onnx-cgen $(MCU_BENCH_ARGS)

lint: $(STAMP) ## ruff check + format check + mypy type check of the package
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# mypy sees the installed names (mnist_edge.train, ...) through a link tree
	@rm -rf build/typecheck && mkdir -p build/typecheck/mnist_edge
	@for p in train export runtime tools; do ln -s ../../../$$p build/typecheck/mnist_edge/$$p; done
	@ln -s ../../../package/__init__.py build/typecheck/mnist_edge/__init__.py
	cd build/typecheck && $(abspath $(BIN))/mypy --config-file ../../pyproject.toml mnist_edge

format: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## Remove caches (keeps data/, artifacts/ and .venv/)
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## Remove everything made by commands: .venv/ .venv-openvino/ data/ artifacts/ images/
	rm -rf $(VENV) $(OV_VENV) $(ML_VENV) $(EMX_VENV) data artifacts images
