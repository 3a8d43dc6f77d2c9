# Two commands do all the set-up on a fresh machine:
#   make demo   builds the bundled offline sample end to end (creates .venv and installs if needed)
#   make test   runs the test suite (creates .venv and installs if needed)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.plantmix-installed
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: install demo test lint bench bench-scale clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and on its own: pip takes the pinned CPU-capable wheels (see constraints.txt)
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	# img2dataset pulls the old `dataclasses` backport, which breaks Prefect's server on Python 3.11
	$(PY) -m pip uninstall --quiet --yes dataclasses || true
	touch $@

demo: install
	$(PY) -m flows.build_plantmix --recipe manifests/recipes/demo.yaml

# pytest exits 5 when it collected no test: that is a failure, not a pass.
test: install
	$(PY) -m pytest -ra $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/download.py

# The driver at 100k and 1M synthetic candidates: time and peak RSS per stage (a few minutes).
bench-scale: install
	$(PY) benchmarks/scale.py

clean-demo:
	rm -rf builds/demo
