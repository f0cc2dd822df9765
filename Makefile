# The two commands a newcomer runs are `make run` and `make test`; every target that
# needs the virtual environment depends on `setup`, which is idempotent.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

.PHONY: setup run run-es test lint bench image es-start es-stop clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	@touch $(STAMP)

run: setup
	bash scripts/run.sh

run-es: setup
	COLLECTOR_SINK=elasticsearch COLLECTOR_ES_URL=$${ES_URL:-http://127.0.0.1:9200} bash scripts/run.sh

test: setup
	bash scripts/test.sh

lint: setup
	$(VENV)/bin/ruff check coap collector tests bench
	$(VENV)/bin/ruff format --check coap collector tests bench
	$(VENV)/bin/mypy coap collector

bench: setup
	$(PY) bench/codec_bench.py
	$(PY) bench/loadtest.py --compare --duration 5

# localhost/iot-collector:<version>, built daemonless with podman (scripts/image.sh).
image:
	bash scripts/image.sh

es-start: setup
	bash scripts/es.sh start

es-stop:
	bash scripts/es.sh stop

clean:
	rm -rf $(VENV) .cache build dist *.egg-info
