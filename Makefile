# tcpopsd: `make run` (install what is missing, build, demo on loopback), `make test` (everything).
SWIFT ?= $(shell command -v swift 2>/dev/null || echo /opt/swift/usr/bin/swift)
PYTHON ?= python3
DEBIAN_PACKAGES = libsystemd-dev pkg-config iproute2 nftables socat iperf3 systemd systemd-container debootstrap
PREFIX ?= /usr/local

.PHONY: all deps build release run test unit integration bench install clean

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

# Binaries, units and the example configuration in their usual places (DESTDIR for staging).
install: release
	install -D -m 0755 .build/release/tcpopsd $(DESTDIR)$(PREFIX)/bin/tcpopsd
	install -D -m 0755 .build/release/tcpopsctl $(DESTDIR)$(PREFIX)/bin/tcpopsctl
	install -D -m 0644 systemd/tcpopsd.service $(DESTDIR)/etc/systemd/system/tcpopsd.service
	install -D -m 0644 systemd/tcpopsd.socket $(DESTDIR)/etc/systemd/system/tcpopsd.socket
	[ -e $(DESTDIR)/etc/tcpopsd/tcpopsd.toml ] || install -D -m 0644 config/tcpopsd.toml $(DESTDIR)/etc/tcpopsd/tcpopsd.toml
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/tcpopsd/README.md
	@[ -n "$(DESTDIR)" ] || systemctl daemon-reload 2>/dev/null || true

clean:
	rm -rf .build
