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
	bash scripts/check-tracked-ignored.sh
	bash scripts/check-format.sh
	@echo "== make test: building the tests (only lookalike itself and the test client are new)"
	$(CARGO) test --release --locked --no-run
	@echo "== make test: writing the ResNet-50 graph of the plug-in test (random weights; examples/resnet50.rs)"
	$(or $(CARGO_TARGET_DIR),target)/release/examples/resnet50
	@echo "== make test: running every test binary (--no-fail-fast: a failure does not hide the others)"
	$(CARGO) test --release --locked --no-fail-fast
	@if [ -n "$$LOOKALIKE_QDRANT_URL" ]; then $(CARGO) test --release --locked --test qdrant -- --ignored $$([ -n "$$LOOKALIKE_QDRANT_CLUSTER" ] || echo "--skip cluster_") $$([ -x /usr/sbin/nginx ] || [ -x /usr/bin/nginx ] || echo "--skip a_load_balancer"); else echo "Qdrant tests skipped: set LOOKALIKE_QDRANT_URL=qdrant://HOST:PORT to run them"; fi
	@if [ -n "$$LOOKALIKE_QDRANT_URL" ] && [ ! -x /usr/sbin/nginx ] && [ ! -x /usr/bin/nginx ]; then echo "Load-balancer test skipped: install Debian's nginx-light to run it"; fi
	@if [ -n "$$LOOKALIKE_QDRANT_URL" ] && [ -z "$$LOOKALIKE_QDRANT_CLUSTER" ]; then echo "Qdrant cluster test skipped: set LOOKALIKE_QDRANT_CLUSTER, _STOP and _START to run it"; fi

# Serve the search page and API at http://$(DEMO_ADDR)/ at once, while the Fashion-MNIST
# training split is indexed in the background (incremental: instant after the first run). The
# server picks up each committed batch from the catalog's change log, so searches work on what
# is indexed so far; the page and /readyz say how far indexing is. Once the import is done,
# `tune --localise` learns where products are in photos (no labels; about 2 minutes, once per
# catalog), and the server uses the head from then on, so a photo of several products gets a
# marker on each. Ctrl-C stops all (the index run commits its batch and resumes next time).
demo: setup
	@mkdir -p $(dir $(DEMO_DB))
	@echo "== make demo: indexing up to $(DEMO_LIMIT) products in the background, then learning where products are in photos (log: $(DEMO_DB).index.log)"
	@( $(BIN) index --db $(DEMO_DB) --fashion-mnist train --limit $(DEMO_LIMIT) && \
	  { $(BIN) info --db $(DEMO_DB) | grep -q '^foreground head: learned' || $(BIN) tune --db $(DEMO_DB) --localise; } ) > $(DEMO_DB).index.log 2>&1 & pid=$$!; \
	while [ ! -s $(DEMO_DB) ] && kill -0 $$pid 2>/dev/null; do sleep 0.2; done; \
	[ -s $(DEMO_DB) ] || { cat $(DEMO_DB).index.log; exit 1; }; \
	echo "== make demo: serving at http://$(DEMO_ADDR)/ (Ctrl-C to stop)"; \
	$(BIN) serve --db $(DEMO_DB) --addr $(DEMO_ADDR)

# Search quality on Fashion-MNIST (catalog: train split; queries: held-out test split).
eval: setup
	$(BIN) index --db $(DEMO_DB) --fashion-mnist train
	$(BIN) eval --db $(DEMO_DB) --fashion-mnist test --queries 2000 --out docs/eval-fashion-mnist.json
