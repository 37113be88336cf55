# tcpopsd: `make run` (install what is missing, build, demo on loopback), `make test` (everything).
SWIFT ?= $(shell command -v swift 2>/dev/null || echo /opt/swift/usr/bin/swift)
PYTHON ?= python3
DEBIAN_PACKAGES = libsystemd-dev pkg-config iproute2 socat iperf3 systemd
PREFIX ?= /usr/local

.PHONY: all deps build release run test unit integration bench clean

all: build

# Installs the Debian packages and Python modules the build and tests need, only where missing.
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi
	@$(PYTHON) -c "import pytest" 2>/dev/null || $(PYTHON) -m pip install -q pytest

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

run: release
	scripts/demo.sh .build/release/tcpopsd config/tcpopsd.toml

unit: build
	$(SWIFT) test --disable-xctest

integration: build
	$(PYTHON) -m pytest -q -p no:cacheprovider Tests/integration

test: unit integration

bench: release
	Benchmarks/run.sh .build/release/tcpopsd

clean:
	rm -rf .build
