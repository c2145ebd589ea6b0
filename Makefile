# lookalike: the two commands are `make demo` (run it) and `make test` (test it).
CARGO ?= cargo
BIN := target/release/lookalike
DEMO_DB ?= demo/fashion-mnist.db
DEMO_LIMIT ?= 60000

.PHONY: setup build test demo eval clean-demo

# Fetch pinned assets (ONNX Runtime, weights, sample photos, Fashion-MNIST), build, and convert
# the built-in models to ONNX. Idempotent; afterwards everything runs offline.
setup:
	bash scripts/setup.sh
	$(CARGO) build --release --locked
	$(BIN) models

build:
	$(CARGO) build --release --locked

# Everything the tests need, then all tests.
test: setup
	$(CARGO) test --release --locked

# Index the Fashion-MNIST training split and search it with a test image.
demo: setup
	$(BIN) index --db $(DEMO_DB) --fashion-mnist train --limit $(DEMO_LIMIT)
	$(BIN) search --db $(DEMO_DB) --like fmnist-train-00000 -k 10

# Search quality on Fashion-MNIST (catalog: train split; queries: held-out test split).
eval: setup
	$(BIN) index --db $(DEMO_DB) --fashion-mnist train
	$(BIN) eval --db $(DEMO_DB) --fashion-mnist test --queries 2000 --out docs/eval-fashion-mnist.json
