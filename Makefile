# The README's commands: `make demo` (whole pipeline on the Python standard library) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
STDLIB := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
DEMO := data/stdlib

.PHONY: install install-test demo test test-all bench gpu-check clean

# The demo needs the package only; tests and benches add the peers and optional engines they compare against.
install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The fused kernels (csrc/) compile at install against the pinned torch, hence --no-build-isolation.
$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install torch==$(TORCH_VERSION) ninja setuptools wheel
	touch $@

$(VENV)/.installed: $(VENV)/.torch setup.py $(wildcard csrc/*)
	$(PY) -m pip install --no-build-isolation -e .
	touch $@

# DeepSpeed JIT-compiles its CPU shared-memory comm op (~75 s) on first use: build it here, once, into a cache of
# this environment's own (tests/conftest.py points TORCH_EXTENSIONS_DIR at it), not inside the test suite. Only where
# DeepSpeed's accelerator is the CPU (a GPU machine has no such op to build).
$(VENV)/.installed-test: $(VENV)/.torch setup.py $(wildcard csrc/*)
	$(PY) -m pip install --no-build-isolation -e ".[test,bench,deepspeed,mpi,wandb]"
	TORCH_EXTENSIONS_DIR=$(abspath $(VENV))/torch_extensions $(PY) -c "from deepspeed.accelerator import \
		get_accelerator as a; b = a().create_op_builder('ShareMemCommBuilder') if a().device_name() == 'cpu' \
		else None; b and b.load()"
	touch $@ $(VENV)/.installed

demo: install
	$(PY) tools/collect_corpus.py --input $(STDLIB) --languages Python --output $(DEMO)/corpus.jsonl \
		--exclude-dirs site-packages,__pycache__,test,tests,idle_test
	$(PY) tools/train_tokenizer.py --input $(DEMO)/corpus.jsonl --vocab-size 8192 --sample-rate 1.0 --output $(DEMO)/tokenizer
	$(PY) tools/preprocess_data.py --input $(DEMO)/corpus.jsonl --tokenizer-type HFTokenizer \
		--vocab-file $(DEMO)/tokenizer/tokenizer.json --append-eod --workers 2 --output-prefix $(DEMO)/stdlib
	$(PY) deepy.py train.py configs/tiny.yml configs/local_setup.yml
	$(PY) deepy.py eval.py configs/tiny.yml configs/local_setup.yml
	$(PY) deepy.py generate.py configs/tiny.yml configs/local_setup.yml configs/text_generation.yml \
		--prompt "def fibonacci(n):"

# Fast suite (the one CI runs); `make test-all` adds the slow end-to-end tests. Two pytest workers: most tests wait
# on process start-up and imports (single-threaded), so two share 2 cores well.
test: install-test
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow" --durations=25 tests

test-all: install-test
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=25 tests

# Everything that needs a GPU, in one command and one summary (runs/gpu_check/summary.txt), at most ~8 minutes on
# an H100/H200. It uses the Python it finds ($(VENV), else GPU_CHECK_PYTHON, else python3): a GPU machine brings
# its own CUDA torch. GPU_CHECK_DRY=1: the same steps on the CPU with tiny shapes (the default test suite runs it).
GPU_CHECK_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_CHECK_PYTHON) tools/gpu_check.py $(GPU_CHECK_ARGS)

bench: install-test
	$(PY) bench/train_throughput.py
	$(PY) bench/kernels.py
	$(PY) bench/generate_throughput.py
	$(PY) bench/hf_load.py
	$(PY) bench/humaneval_exec.py
	$(PY) bench/preprocess_throughput.py
	$(PY) bench/eval_throughput.py
	$(PY) bench/scaling.py

clean:
	rm -rf $(VENV) $(DEMO) checkpoints runs build megatron_lite/_fused_*.so
