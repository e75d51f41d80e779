# llm-router: `make demo` runs the whole system on this machine, `make test` runs the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

.PHONY: demo test bench chaos lint venv redis chromium clean compat-matrix

demo: $(STAMP) redis
	$(BIN)/llm-router demo

# two pytest workers, each file whole on one (its module fixtures, fleets of processes, start once);
# then, in one process: tests/admission (it measures how many calls a fleet keeps in flight, which a
# second suite beside it would starve of CPU) and tests/compat (its last file checks the README's
# matrix against every compat case of the run). TEST_WORKERS=0 runs the first part in one process.
TEST_WORKERS ?= 2
test: $(STAMP) redis chromium
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --ignore=tests/compat --ignore=tests/admission
	$(BIN)/python -m pytest -q tests/admission tests/compat

bench: $(STAMP) redis
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/breakers.py
	$(BIN)/python bench/admission.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/width.py
	$(BIN)/python bench/http_latency.py
	$(BIN)/python bench/images.py
	$(BIN)/python bench/observability.py
	$(BIN)/python bench/redis_sizing.py
	$(BIN)/python bench/webhooks.py
	$(BIN)/python bench/lanes.py

# the full-size chaos run (the CI size is part of `make test`)
chaos: $(STAMP) redis
	LLM_ROUTER_CHAOS_JOBS=5000 LLM_ROUTER_CHAOS_LANE_JOBS=3000 LLM_ROUTER_CHAOS_TENANTS=200 LLM_ROUTER_CHAOS_TENANT_JOBS=50 $(BIN)/python -m pytest -q -s tests/chaos
	LLM_ROUTER_FAILOVER_JOBS=2000 $(BIN)/python -m pytest -q -s tests/fleet/test_failover.py
	LLM_ROUTER_FAILOVER_JOBS=2000 LLM_ROUTER_FAILOVER_LEASE_S=1 $(BIN)/python -m pytest -q -s tests/fleet/test_failover.py
	LLM_ROUTER_CHAOS_CLIENTS=2000 LLM_ROUTER_CHAOS_FREEZE_S=20 LLM_ROUTER_CHAOS_REDIS_TIMEOUT_S=5 $(BIN)/python -m pytest -q -s tests/chaos/test_chaos_clients.py
	LLM_ROUTER_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -q tests/core/test_fuzz_contract.py
	LLM_ROUTER_FUZZ_HTTP_EXAMPLES=100 $(BIN)/python -m pytest -q tests/http/test_openapi_fuzz.py
	LLM_ROUTER_FAILOVER_SCALE=1 $(BIN)/python -m pytest -q -s tests/failover

# the README's client compatibility matrix, written from a run of tests/compat (make test checks it)
compat-matrix: $(STAMP) redis
	LLM_ROUTER_COMPAT_WRITE_README=1 $(BIN)/python -m pytest -q tests/compat

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "llm-router needs Python 3.11 or newer")'
	@$(PY) -m venv $(VENV) 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && $(APT_INSTALL) python3-venv && $(PY) -m venv $(VENV); \
	  else echo "python3 -m venv failed; run: sudo apt-get install -y python3-venv"; exit 1; fi; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

# redis-server from Debian's packages: installed when we are root, else the one command to run
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && $(APT_INSTALL) redis-server; \
	  else echo "redis-server is missing; run: sudo apt-get update && sudo apt-get install -y redis-server"; exit 1; fi; }

# Debian's chromium and chromedriver for the dashboard's browser test (nothing downloads a browser):
# installed when we are root, else the one command to run (the test skips without them, fails under CI=true)
chromium:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && $(APT_INSTALL) chromium chromium-driver; \
	  else echo "chromium is missing; run: sudo apt-get update && sudo apt-get install -y chromium chromium-driver"; fi; }

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
