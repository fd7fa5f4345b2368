# Two commands on a fresh machine:  `make demo`  and  `make test`.
# The virtual environment gets the CPU build of torch unless an NVIDIA GPU is
# present (then the default CUDA build from the package index).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH_CPU := torch==2.13.0

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    $(BIN)/python -m pip install -q torch; \
	else \
	    $(BIN)/python -m pip install -q $(TORCH_CPU); \
	fi
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: install
	mkdir -p out
	$(BIN)/astrohvae run --example --out out/example.cat.fits --preview --overwrite

test: install
	$(BIN)/python -m pytest -q

bench: install
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf out .pytest_cache
