# archiverd: `make run` serves on 127.0.0.1:8010 with local-file storage;
# `make test` runs the whole suite. Both install what they need into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?=
PYTEST_ARGS ?=

.PHONY: install run test unit integration bench soak lint clean

# Dependencies are installed once per change of setup.py or the requirement
# files; the checkout itself is reinstalled every time (non-editable, so that
# twistd's plugin discovery sees twisted/plugins/archiverd_plugin.py).
$(VENV)/.deps: setup.py requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q . -r requirements-test.txt
	touch $@

install: $(VENV)/.deps
	rm -rf build
	$(BIN)/pip install -q --no-deps --no-build-isolation --force-reinstall .
	rm -rf build archiverd.egg-info
	@$(BIN)/twistd --help | grep -q archiverd || \
		{ echo "twistd does not list the archiverd plugin" >&2; exit 1; }

run: install
	$(BIN)/twistd -n --pidfile= archiverd $(if $(CONFIG),--config $(CONFIG))

test: install lint
	scripts/radosgw.sh install
	scripts/redis.sh install
	scripts/faketime.sh install
	scripts/chromium.sh install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check archiverd bench tests twisted
	$(BIN)/ruff format --check archiverd bench tests twisted
	$(BIN)/mypy archiverd

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: install
	scripts/radosgw.sh install
	scripts/redis.sh install
	scripts/faketime.sh install
	scripts/chromium.sh install
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

bench: install
	@command -v wrk >/dev/null || apt-get install -y wrk >/dev/null || \
		{ echo "bench: wrk is needed (apt-get install wrk)" >&2; exit 1; }
	scripts/redis.sh install
	$(BIN)/python -m bench $(BENCH_ARGS)

soak: install
	@command -v wrk >/dev/null || apt-get install -y wrk >/dev/null || \
		{ echo "soak: wrk is needed (apt-get install wrk)" >&2; exit 1; }
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info archiverd-data .pytest_cache .hypothesis
