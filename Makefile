# mnist-edge: every target works on a fresh clone; `make venv` is implied.
# Variables: PYTHON (interpreter for the venv), EXTRAS (train,export,cpu,serve,scale,dev; use gpu
# instead of cpu on a CUDA machine), DATASET, DEVICE, ARGS (extra CLI options).

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
WEB_PORT ?= 8000
comma   := ,
# One stamp per set of extras: switching EXTRAS (e.g. to train,export,gpu,dev) reinstalls.
STAMP   := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.DEFAULT_GOAL := help
.PHONY: help venv data train export parity samples bench test lint format clean distclean web web-deps

help: ## Show this help
	@echo "mnist-edge — make targets (a fresh clone needs nothing but python3):"
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'
	@echo "Variables: DATASET=mnist|fashion-mnist  DEVICE=auto|cpu|cuda  ARGS='extra CLI options'"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# onnxruntime and onnxruntime-gpu share one module folder: never keep both.
	@case ',$(EXTRAS),' in \
	  *,gpu,*) $(BIN)/python -m pip uninstall -y -q onnxruntime 2>/dev/null || true ;; \
	  *,cpu,*) $(BIN)/python -m pip uninstall -y -q onnxruntime-gpu 2>/dev/null || true ;; \
	esac
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

parity: $(STAMP) ## Compare PyTorch, ONNX fp32 and int8 on the full test set
	$(BIN)/mnist-export --parity-only $(ARGS)

samples: $(STAMP) ## Write some test-set digits (and photo-like variants) into images/
	$(BIN)/python -m mnist_edge.tools.samples images $(ARGS)

bench: $(STAMP) ## Benchmarks: training, model-only and end-to-end inference, serving, Ray -> artifacts/bench.json
	$(BIN)/python bench/bench_train.py $(TRAIN_BENCH_ARGS)
	$(BIN)/python bench/bench_infer.py $(INFER_BENCH_ARGS)
	$(BIN)/python bench/bench_serve.py $(SERVE_BENCH_ARGS)
	$(BIN)/python bench/bench_ray.py $(RAY_BENCH_ARGS)

web-deps: web/vendor/ort-wasm-simd-threaded.wasm ## Install the page's onnxruntime-web (npm ci in web/; copies its 3 runtime files to web/vendor/)

web/vendor/ort-wasm-simd-threaded.wasm: web/package.json web/package-lock.json web/copy-runtime.mjs
	cd web && npm ci --no-audit --no-fund

web: $(STAMP) web-deps ## Serve the web page and the models in artifacts/ on 127.0.0.1 (WEB_PORT=8000)
	$(BIN)/python -m mnist_edge.tools.webserve --web-dir web --models artifacts --port $(WEB_PORT) $(ARGS)

# No venv stamp here: a GPU machine's own torch and onnxruntime-gpu are used as they are.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
.PHONY: gpu-check
gpu-check: ## CUDA end to end: gpu tests, 15-epoch train, export, mnist-infer, IOBinding -> artifacts/gpu-check.json
	$(GPU_PYTHON) bench/gpu_check.py $(ARGS)

test: $(STAMP) ## Run the test suite
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP) ## ruff check + format check + mypy type check of the package
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# mypy sees the installed names (mnist_edge.train, ...) through a link tree
	@rm -rf build/typecheck && mkdir -p build/typecheck/mnist_edge
	@for p in train export runtime; do ln -s ../../../$$p build/typecheck/mnist_edge/$$p; done
	cd build/typecheck && $(abspath $(BIN))/mypy --config-file ../../pyproject.toml mnist_edge

format: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## Remove caches (keeps data/, artifacts/ and .venv/)
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## Remove everything made by commands: .venv/ data/ artifacts/ images/
	rm -rf $(VENV) data artifacts images
