# lookalike: the two commands are `make demo` (run it) and `make test` (test it).
CARGO ?= cargo
BIN := $(or $(CARGO_TARGET_DIR),target)/release/lookalike
DEMO_DB ?= demo/fashion-mnist.db
DEMO_LIMIT ?= 60000
DEMO_ADDR ?= 127.0.0.1:8080

.PHONY: setup build test demo eval clean-demo

# Fetch pinned assets (ONNX Runtime, weights, sample photos, Fashion-MNIST), build, and convert
# the built-in models to ONNX. Idempotent; afterwards everything runs offline.
setup:
	bash scripts/setup.sh
	$(CARGO) build --release --locked
	$(BIN) models

build:
	$(CARGO) build --release --locked

# Everything the tests need, then all tests. tests/http.rs includes the headless-browser test of
# the page, which installs Debian's chromium and npm's playwright-core on first use
# (scripts/browser-test.sh); screenshots land in artifacts/.
test: setup
	@echo "== make test: checking that the test build shares the release build's dependencies"
	bash scripts/check-test-features.sh
	@echo "== make test: building the tests (only lookalike itself and the test client are new)"
	$(CARGO) test --release --locked --no-run
	@echo "== make test: running every test binary (--no-fail-fast: a failure does not hide the others)"
	$(CARGO) test --release --locked --no-fail-fast
	@if [ -n "$$LOOKALIKE_QDRANT_URL" ]; then $(CARGO) test --release --locked --test qdrant -- --ignored $$([ -n "$$LOOKALIKE_QDRANT_CLUSTER" ] || echo "--skip cluster_"); else echo "Qdrant tests skipped: set LOOKALIKE_QDRANT_URL=qdrant://HOST:PORT to run them"; fi
	@if [ -n "$$LOOKALIKE_QDRANT_URL" ] && [ -z "$$LOOKALIKE_QDRANT_CLUSTER" ]; then echo "Qdrant cluster test skipped: set LOOKALIKE_QDRANT_CLUSTER, _STOP and _START to run it"; fi

# Index the Fashion-MNIST training split (incremental: instant after the first run) and serve
# the search page and API at http://$(DEMO_ADDR)/ until Ctrl-C.
demo: setup
	$(BIN) index --db $(DEMO_DB) --fashion-mnist train --limit $(DEMO_LIMIT)
	$(BIN) serve --db $(DEMO_DB) --addr $(DEMO_ADDR)

# Search quality on Fashion-MNIST (catalog: train split; queries: held-out test split).
eval: setup
	$(BIN) index --db $(DEMO_DB) --fashion-mnist train
	$(BIN) eval --db $(DEMO_DB) --fashion-mnist test --queries 2000 --out docs/eval-fashion-mnist.json
