# The two commands: `make demo` (the whole chain on the embedded demo dataset) and `make test`.
# Both set everything up first on a fresh Debian 12 / Ubuntu machine: system packages (as root),
# the Python venv in .venv, and the project's Caffe build (cached under ~/.cache/ssdlite-coco).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
CORES ?= $(shell nproc)
export PATH := $(abspath $(VENV))/bin:$(PATH)
export SSDLITE_PYTHON := $(abspath $(VENV))/bin/python

.PHONY: setup setup-edge system-deps venv caffe demo test lint clean

setup: system-deps venv caffe

system-deps:
	@scripts/install-system-deps

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

caffe: venv
	scripts/with-caffe true

# The edge toolchains of the export check (export.runtimes: rknn, openvino, ncnn, litert), each in its own
# venv (several GB in all); not part of `make setup`: they are installed here or on first use.
setup-edge: venv
	PYTHONPATH=. $(VENV)/bin/python -m ssdlite_coco.export.edge.environment

demo: setup
	snakemake --cores $(CORES) --configfile config/config.yaml

test: setup
	scripts/with-caffe python -m pytest

lint: venv
	ruff check .
	ruff format --check .
	snakefmt --check Snakefile rules
	snakemake --lint --cores 1

clean:
	rm -rf results logs .snakemake
