# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
DEMO_DIR ?= runs/demo
PHOTOS ?=

.PHONY: setup demo test test-fast test-bar bench study clean lint fmt

setup: $(STAMP)

# The page's browser test (tests/serve/test_browser.py) drives Debian's chromium + chromium-driver
# through selenium; installed here when missing (CI runs as root).  Nothing downloads a browser.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "make: chromium + chromedriver missing (apt-get install chromium chromium-driver as root):" \
	  "the browser test will fail" >&2; fi

# torch comes from the lock (torch==2.13.0, the local CPU wheel); installing it first,
# alone, means nothing later can pull a CUDA build.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$$(grep '^torch==' requirements.lock)"
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: setup
	$(BIN)/python -m exiflang.demo --out $(DEMO_DIR) $(if $(PHOTOS),--photos $(PHOTOS),)

# The whole suite, every tier (what CI runs), on TEST_WORKERS pytest-xdist workers (auto: one per
# CPU core, at most 8; TEST_WORKERS=0 runs it in one process).  The shared trained run is built
# first, by one worker, while the others run the rest; its tests come last (tests/conftest.py).
# It is cached between sessions by its inputs (tests/synth_run.py; EXIFLANG_TEST_CACHE=off
# builds it afresh).
TEST_WORKERS ?= auto
XDIST = -n $(TEST_WORKERS) --maxprocesses 8
test: setup browser
	$(BIN)/python -m pytest -q $(XDIST) --durations=20 tests

# The unit tier for the edit loop: no slow (> ~5 s) and no integration (Ray, torchrun, servers,
# whole command chains) tests; a few minutes on 2 cores.
test-fast: setup
	$(BIN)/python -m pytest -q $(XDIST) --durations=20 -m "not slow and not integration" tests

# The lint gate (CI runs it before the tests): ruff lint + format check over the tree, mypy over the
# packages; all three report, then any failure fails.  mypy reads a fresh tree of symlinks,
# build/typecheck/exiflang/{*.py,serve,pipeline,train,eval}, because a checkout maps
# exiflang.pipeline/.train/.eval onto the root folders only at run time (exiflang/__init__.py); its
# paths are mapped back to the checkout's in the report.
TYPECHECK := build/typecheck
lint: setup
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/exiflang
	for p in exiflang/* pipeline train eval; do \
	  case "$$p" in *__pycache__*) continue;; esac; \
	  ln -s "$(CURDIR)/$$p" "$(TYPECHECK)/exiflang/$$(basename $$p)"; done
	rc=0; \
	$(BIN)/ruff check . || rc=1; \
	$(BIN)/ruff format --check . || rc=1; \
	cd $(TYPECHECK) && MYPYPATH=. $(abspath $(BIN))/mypy --config-file $(CURDIR)/pyproject.toml \
	  --cache-dir $(CURDIR)/build/mypy_cache -p exiflang > ../mypy.out || rc=1; \
	sed -E 's#^exiflang/(pipeline|train|eval)/#\1/#' ../mypy.out; exit $$rc

# The autofixes, in one pass over the tree: safe fixes, then the formatter.  What remains after it
# is for hand-fixing (`make lint` lists it).
fmt: setup
	$(BIN)/ruff check --fix --exit-zero .
	$(BIN)/ruff format .

# The splice bar (p-mAP and detection AP >= 0.8) on four held-out splice sets: trains
# `cpu-small` ~20 minutes (tests/bar_run.py, tests/eval/test_splice_bar.py).
test-bar: setup
	EXIFLANG_BAR=1 $(BIN)/python -m pytest -q -s tests/eval/test_splice_bar.py

# The small-scale study of the README ("Results at small scale"): STUDY_STEPS per model.
STUDY_STEPS ?= 1500
study: setup
	$(BIN)/python -m exiflang.eval.study --out runs/study --steps $(STUDY_STEPS)

bench: setup
	$(BIN)/python benchmarks/pipeline_throughput.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
