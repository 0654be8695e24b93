# seedscope: `make test` and `make repro` each set up .venv from nothing when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser test repro smoke long crfm polypythia lab lint format bench owt-text clean-venv

setup: $(STAMP)

# torch first, pinned, from the local CPU wheel: an unpinned torch would pull CUDA builds.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name seedscope --display-name "seedscope (.venv)" >/dev/null
	@touch $(STAMP)

# Headless Chromium for the report's browser test (Debian's package; root installs it).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report's browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

lint: setup
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/ruff format --check src tests benchmarks notebooks

format: setup
	$(BIN)/ruff check --fix src tests benchmarks notebooks
	$(BIN)/ruff format src tests benchmarks notebooks

test: setup lint browser
	$(BIN)/python -m pytest -q

repro: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# The whole pipeline on the tiny smoke profile, in a scratch copy (.smoke/), a few minutes.
smoke: setup
	rm -rf .smoke && mkdir .smoke
	$(BIN)/python -c "from seedscope.pipeline.runner import scratch_copy; scratch_copy('.smoke', 'smoke')"
	cd .smoke && SEEDSCOPE_ROOT="$$PWD" PATH="$(abspath $(BIN)):$$PATH" dvc repro
	@echo "open .smoke/reports/index.html"

# The induction profile (~2 h) in a scratch copy (.long/); rerun to resume, rm -rf .long to restart.
long: setup
	test -d .long || $(BIN)/python -c "from seedscope.pipeline.runner import scratch_copy; scratch_copy('.long', 'induction')"
	cd .long && SEEDSCOPE_ROOT="$$PWD" PATH="$(abspath $(BIN)):$$PATH" dvc repro
	@echo "open .long/reports/index.html"

# The real study (hub + GPU): a profile's pipeline in a scratch copy (.crfm/, .polypythia/),
# with its eval text (data.dvc + owt-text) and tokenizer fetched first; rerun to resume.
crfm: setup
	$(call real_study,.crfm,crfm,hf download openai-community/gpt2 vocab.json merges.txt --local-dir tokenizers/gpt2,tokenizers/gpt2/merges.txt)

polypythia: setup
	$(call real_study,.polypythia,polypythia-160m,hf download EleutherAI/pythia-160m tokenizer.json tokenizer_config.json special_tokens_map.json --local-dir tokenizers/pythia,tokenizers/pythia/tokenizer.json)

# $(1) scratch folder, $(2) profile, $(3) tokenizer download, $(4) a file it leaves
define real_study
	test -d $(1) || $(BIN)/python -c "from seedscope.pipeline.runner import scratch_copy; scratch_copy('$(1)', '$(2)')"
	cd $(1) && test -d data/openwebtext-10k || { PATH="$(abspath $(BIN)):$$PATH" dvc update data.dvc && $(MAKE) owt-text; }
	cd $(1) && test -f $(4) || PATH="$(abspath $(BIN)):$$PATH" $(3)
	cd $(1) && SEEDSCOPE_ROOT="$$PWD" PATH="$(abspath $(BIN)):$$PATH" dvc repro
	@echo "open $(1)/reports/index.html"
endef

# JupyterLab with the project's kernel ("seedscope (.venv)"), notebooks folder open.
lab: setup
	SEEDSCOPE_ROOT="$(CURDIR)" $(BIN)/jupyter lab --notebook-dir=notebooks

bench: setup
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_train.py

# After `dvc update data.dvc` (network): unpack the OpenWebText sample to data/openwebtext-10k/*.txt
owt-text:
	tar -xJf data/openwebtext-10k.tar.xz -C data
	tar -xJf data/openwebtext-10k/10k.xz -C data/openwebtext-10k && rm data/openwebtext-10k/10k.xz

clean-venv:
	rm -rf $(VENV)
