# The two commands of the README: `make up` (the main job) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# runc, nftables: the node; buildah, debootstrap, gcc, libc6-dev: the image (replayops dev image)
UP_PACKAGES := python3-venv git curl iproute2 iptables openssh-client runc nftables buildah debootstrap gcc libc6-dev
# what only the tests use: a real sshd (git over ssh) and a real Chromium (the inspector's pages)
TEST_PACKAGES := openssh-server chromium

.PHONY: up down test lint system-deps venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

# Debian packages (the target's list: up's, or up's and the tests'); installed only when one is missing
# (needs root); before the venv, which needs python3-venv.
system-deps:
	@missing=$$(for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# Needs root (the node's bridge, network namespaces, mounts, nftables; debootstrap and buildah for the image).
up: PACKAGES = $(UP_PACKAGES)
up: system-deps $(STAMP)
	$(BIN)/replayops up

down: $(STAMP)
	$(BIN)/replayops dev down

# The tests start a node of their own; the machine has room for one, so a cluster `make up` left is stopped.
test: PACKAGES = $(UP_PACKAGES) $(TEST_PACKAGES)
test: system-deps $(STAMP)
	$(BIN)/replayops dev down
	$(BIN)/replayops dev build
	$(BIN)/replayops dev image
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check controller tests
	$(BIN)/mypy controller
