# Entry points for a fresh machine: each target installs what is missing, then runs cargo.
.PHONY: demo test lint bench setup

setup:
	@bash scripts/setup.sh

demo: setup
	cargo run --release -- demo

test: setup
	cargo test

lint: setup
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

bench: setup
	cargo bench --bench normalize
	cargo run --release -- bench scrape
