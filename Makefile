# The README's commands. Each creates .venv on demand and installs what it needs,
# system packages included (apt-get, as root or through sudo).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian package:a file it installs; packages whose file is missing are installed.
TEST_PACKAGES := mosquitto:/usr/sbin/mosquitto mosquitto-clients:/usr/bin/mosquitto_sub \
	systemd:/usr/bin/systemd-analyze \
	libportaudio2:/usr/share/doc/libportaudio2 espeak-ng:/usr/bin/espeak-ng
BENCH_PACKAGES := $(TEST_PACKAGES) dataset-fashion-mnist:/usr/share/doc/dataset-fashion-mnist

.PHONY: demo test bench models face-example lint test-deps bench-deps arm64-check clean help

help:
	@echo "make demo    the whole system on this machine (broker, daemon, bundled model, live view)"
	@echo "make test    lint, type-check and run the test suite"
	@echo "make bench   benchmarks (ratios measured side by side in one run)"
	@echo "make models  rebuild the demo's bundled model and sample video"
	@echo "make face-example ORL_DIR=...  face detector + ORL identity bundles and their device config"
	@echo "make arm64-check  the device side on linux/arm64 under qemu (slow; not in make test)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# One stamp per set of extras, rebuilt when pyproject.toml changes.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[device,demo]'
	touch $@

# $(call apt_ensure,PACKAGE:FILE ...)
define apt_ensure
	@missing=""; for entry in $(1); do \
		pkg=$${entry%%:*}; file=$${entry#*:}; \
		[ -e "$$file" ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

test-deps:
	$(call apt_ensure,$(TEST_PACKAGES))

bench-deps:
	$(call apt_ensure,$(BENCH_PACKAGES))

demo: $(VENV)/.demo-installed
	$(BIN)/edgewatch demo

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/mypy

test: test-deps $(VENV)/.dev-installed lint
	$(BIN)/python -m pytest --ignore=tests/benchmarks -q

bench: bench-deps $(VENV)/.dev-installed
	$(BIN)/python -m pytest tests/benchmarks -q -s

models: $(VENV)/.dev-installed
	$(BIN)/python -m training.demo_assets deploy/demo

# The face example (docs/faces.md): a face detector trained on scenes composed from ORL
# pictures, the identity classifier trained on ORL, both int8, and faces.toml, in
# FACE_OUT. Long on a CPU (the two trainings); steps already done are reused.
ORL_DIR ?= ../shared/datasets/orl_faces
FACE_OUT ?= build/face-example
FACE_ARGS ?=
face-example: $(VENV)/.dev-installed
	$(BIN)/python -m training.recipes.faces --orl $(ORL_DIR) --out $(FACE_OUT) $(FACE_ARGS)

# Not part of `make test`: it emulates a Debian arm64 root (cached in .arm64-root/) and
# runs the device extra and the demo there. About ten minutes the first time, one or two
# after. `make arm64-check ARM64_CHECK_ARGS=--fresh` rebuilds the root.
ARM64_CHECK_ARGS ?=
arm64-check:
	$(SUDO) deploy/arm64-check.sh $(ARM64_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
