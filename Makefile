# The two commands of the README: `make up` (the main job) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# runc, nftables: the node; buildah, debootstrap, gcc, libc6-dev: the image (replayops dev image)
DEBIAN_PACKAGES := git curl iproute2 iptables openssh-server openssh-client chromium runc nftables buildah \
	debootstrap gcc libc6-dev

.PHONY: up down test lint system-deps venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

# Debian packages the tests use; installed only when one is missing (needs root).
system-deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# Needs root (the node's bridge, network namespaces, mounts, nftables; debootstrap and buildah for the image).
up: $(STAMP) system-deps
	$(BIN)/replayops up

down: $(STAMP)
	$(BIN)/replayops dev down

# The tests start a node of their own; the machine has room for one, so a cluster `make up` left is stopped.
test: $(STAMP) system-deps
	$(BIN)/replayops dev down
	$(BIN)/replayops dev build
	$(BIN)/replayops dev image
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check controller tests
	$(BIN)/mypy controller
