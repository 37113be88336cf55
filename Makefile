# tcpopsd: `make run` (install what is missing, build, demo on loopback), `make test` (everything).
SWIFT ?= $(shell command -v swift 2>/dev/null || echo /opt/swift/usr/bin/swift)
PYTHON ?= python3
DEBIAN_PACKAGES = libsystemd-dev pkg-config iproute2 nftables socat iperf3 systemd systemd-container debootstrap \
                  haproxy kamailio sip-tester jq prometheus strace systemd-journal-remote dpkg-dev lintian mandoc
PREFIX ?= /usr/local
# --version names the git revision when built from a checkout.
export TCPOPS_GIT_REVISION := $(shell git rev-parse --short=10 HEAD 2>/dev/null)

.PHONY: all deps build release run test unit integration fuzz fuzz-build fuzz-smoke test-sanitize soak bench install install-files deb clean

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

test: unit integration fuzz-smoke

# libFuzzer targets (Fuzz/): the config parser and the control request decoder, under
# AddressSanitizer, in a build folder of their own. `make fuzz` runs each FUZZ_RUNS times (1 M by
# default); `make test` runs a short smoke of each. New inputs go to .build-fuzz/corpus/, the seeds
# in Fuzz/corpus/ stay as they are.
FUZZ_TARGETS = FuzzConfig:config:toml FuzzControl:control:control FuzzProxy:proxy:proxy
FUZZ_RUNS ?= 1000000
fuzz-build: deps
	@for t in $(FUZZ_TARGETS); do name=$${t%%:*}; \
	  TCPOPS_FUZZ=1 $(SWIFT) build -c release --scratch-path .build-fuzz --product $$name -Xswiftc -sanitize=fuzzer,address || exit 1; done

fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do name=$${t%%:*}; rest=$${t#*:}; corpus=$${rest%%:*}; dict=$${rest#*:}; \
	  mkdir -p .build-fuzz/corpus/$$corpus; log=.build-fuzz/$$name.log; \
	  if .build-fuzz/release/$$name -runs=$(FUZZ_RUNS) -max_len=4096 -dict=Fuzz/$$dict.dict -print_final_stats=1 \
	       -artifact_prefix=.build-fuzz/ .build-fuzz/corpus/$$corpus Fuzz/corpus/$$corpus >$$log 2>&1; then \
	    echo "$$name: $$(grep -h '^stat::number_of_executed_units' $$log | cut -d: -f4 | tr -d ' ') runs, no crash, no leak" \
	      "(corpus $$(ls .build-fuzz/corpus/$$corpus | wc -l) inputs; peak RSS $$(grep -h '^stat::peak_rss_mb' $$log | cut -d: -f4 | tr -d ' ') MB)"; \
	  else tail -40 $$log; echo "$$name FAILED: the input is in .build-fuzz/ (crash-*, leak-*, timeout-*)"; exit 1; fi; done

fuzz-smoke:
	$(MAKE) fuzz FUZZ_RUNS=$${FUZZ_SMOKE_RUNS:-30000}

# The integration tests once under AddressSanitizer (+ LeakSanitizer at every clean exit) and once
# under ThreadSanitizer, each build in a folder of its own. Any report fails the test it happened in.
# The systemd-container tests are left out: the unit's sandbox is not made for sanitizer runtimes.
SANITIZE_PYTEST = $(PYTHON) -m pytest -q -p no:cacheprovider Tests/integration --ignore=Tests/integration/test_container.py \
                 --ignore=Tests/integration/test_fleet.py
test-sanitize: deps
	TCPOPS_SANITIZE=1 $(SWIFT) build --sanitize=address --scratch-path .build-asan
	TCPOPS_SANITIZER=address ASAN_OPTIONS=detect_leaks=1 \
	  TCPOPSD=$(CURDIR)/.build-asan/debug/tcpopsd TCPOPSCTL=$(CURDIR)/.build-asan/debug/tcpopsctl $(SANITIZE_PYTEST)
	TCPOPS_SANITIZE=1 $(SWIFT) build --sanitize=thread --scratch-path .build-tsan
	TCPOPS_SANITIZER=thread TSAN_OPTIONS=halt_on_error=0:exitcode=66 \
	  TCPOPSD=$(CURDIR)/.build-tsan/debug/tcpopsd TCPOPSCTL=$(CURDIR)/.build-tsan/debug/tcpopsctl $(SANITIZE_PYTEST)

# Churn, faults and reloads against the release build for MINUTES minutes (scripts/soak.py).
MINUTES ?= 5
soak: release
	$(PYTHON) scripts/soak.py $(MINUTES)

# tcpopsd (default configuration: events on) beside HAProxy, nginx stream (each without logs and
# with a line per connection into the same journald), systemd-socket-proxyd and socat: 3
# interleaved rounds, medians with ratios to direct, then the like-with-like tables (a) and (b)
# (Benchmarks/bench.py, docs/benchmarks.md). ~40 minutes; ROUNDS=1 or ONLY=name,... for less.
# Before/after a change, in one run: make bench BASELINE=path/to/old/tcpopsd ROUNDS=5 ONLY=tcpopsd-auto,tcpopsd-before
ROUNDS ?= 3
BENCH_PACKAGES = haproxy nginx libnginx-mod-stream iperf3 socat gcc systemd linux-perf
bench: release
	@missing=""; for p in $(BENCH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi
	$(PYTHON) Benchmarks/bench.py --tcpopsd .build/release/tcpopsd $(if $(BASELINE),--baseline $(BASELINE)) $(if $(ROUNDS),--rounds $(ROUNDS)) $(if $(ONLY),--only $(ONLY))
	@# Crash safety on and off under a real systemd (a container; skipped, saying why, without one).
	$(PYTHON) Benchmarks/crash_cost.py --tcpopsd .build/release/tcpopsd $(if $(ROUNDS),--rounds $(ROUNDS))

# Binaries, units, the example configuration, the manual pages (written by hand in man/), tcpopsctl's
# shell completions, the journal message catalog (journalctl -x) and the contract's pages, in their
# usual places (DESTDIR for staging; PREFIX /usr/local). `install-files` copies what BUILDDIR holds
# without building (the Debian package uses it with PREFIX=/usr).
MANDIR = $(PREFIX)/share/man
BUILDDIR ?= .build/release
UNITDIR ?= /etc/systemd/system
ZSHDIR ?= $(PREFIX)/share/zsh/site-functions
install: release install-files
	@[ -n "$(DESTDIR)" ] || systemctl daemon-reload 2>/dev/null || true
	@[ -n "$(DESTDIR)" ] || mandb -q 2>/dev/null || true
	@[ -n "$(DESTDIR)" ] || journalctl --update-catalog 2>/dev/null || true

install-files:
	install -D -m 0755 $(BUILDDIR)/tcpopsd $(DESTDIR)$(PREFIX)/bin/tcpopsd
	install -D -m 0755 $(BUILDDIR)/tcpopsctl $(DESTDIR)$(PREFIX)/bin/tcpopsctl
	@# The units name the binaries and the docs where this PREFIX puts them.
	mkdir -p $(DESTDIR)$(UNITDIR)
	for u in tcpopsd.service tcpopsd.socket; do \
	  sed -e 's|/usr/local/|$(PREFIX)/|g' systemd/$$u > $(DESTDIR)$(UNITDIR)/$$u && chmod 0644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; done
	@# The production example, only where there is no configuration yet (never replaced); the demo
	@# that `make run` uses is an example beside it.
	[ -e $(DESTDIR)/etc/tcpopsd/tcpopsd.toml ] || install -D -m 0644 config/production.toml $(DESTDIR)/etc/tcpopsd/tcpopsd.toml
	install -D -m 0644 config/production.toml $(DESTDIR)$(PREFIX)/share/doc/tcpopsd/examples/production.toml
	install -D -m 0644 config/tcpopsd.toml $(DESTDIR)$(PREFIX)/share/doc/tcpopsd/examples/demo.toml
	install -D -m 0644 man/tcpopsctl.1 $(DESTDIR)$(MANDIR)/man1/tcpopsctl.1
	install -D -m 0644 man/tcpopsd.toml.5 $(DESTDIR)$(MANDIR)/man5/tcpopsd.toml.5
	install -D -m 0644 man/tcpopsd.8 $(DESTDIR)$(MANDIR)/man8/tcpopsd.8
	mkdir -p $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(ZSHDIR) \
	  $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	$(BUILDDIR)/tcpopsctl --generate-completion-script bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/tcpopsctl
	$(BUILDDIR)/tcpopsctl --generate-completion-script zsh > $(DESTDIR)$(ZSHDIR)/_tcpopsctl
	$(BUILDDIR)/tcpopsctl --generate-completion-script fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/tcpopsctl.fish
	install -D -m 0644 docs/catalog/tcpopsd.catalog $(DESTDIR)$(PREFIX)/lib/systemd/catalog/tcpopsd.catalog
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/tcpopsd/README.md
	install -m 0644 docs/*.md $(DESTDIR)$(PREFIX)/share/doc/tcpopsd/

# A Debian package of the release build (packaging/deb.sh: PREFIX=/usr, the units in
# /lib/systemd/system, the configuration a conffile, maintainer scripts as Debian's own), checked
# by lintian. DEB_VERSION defaults to the version tcpopsd --version prints.
deb: release
	packaging/deb.sh $(CURDIR)/.build/release $(CURDIR)/.build/deb $(DEB_VERSION)

clean:
	rm -rf .build
