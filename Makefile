# Tollgate: the two commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# One target directory outside the clone, so every clone (and CI) builds warm.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/tollgate/target
CARGO ?= cargo

# Local development defaults; any of them can be overridden from the environment.
export AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/%2f
export DATABASE_URL ?= postgres://postgres:postgres@127.0.0.1:5432/tollgate
export REDIS_URL ?= redis://127.0.0.1:6379
export STRIPE_WEBHOOK_SECRET ?= whsec_local_development_only
export INGEST_ADDR ?= 127.0.0.1:8080
export ENTITLEMENTS_ADDR ?= 127.0.0.1:50051
export ENTITLEMENTS_SERVICE_TOKENS ?= local-development-token-only
export BILLING_API_ADDR ?= 127.0.0.1:8082
export BILLING_API_SERVICE_TOKENS ?= local-development-token-only
export BILLING_API_ADMIN_TOKENS ?= local-admin:local-development-admin-token
export BILLING_API_JWT_HS256_SECRET ?= local-development-hs256-secret-0123456789
export BILLING_API_CORS_ORIGINS ?= http://localhost:5173,http://127.0.0.1:5173
export FULFILLMENT_ADDR ?= 127.0.0.1:8083
export FULFILLMENT_ENTITLEMENTS_URL ?= http://127.0.0.1:50051
export FULFILLMENT_ENTITLEMENTS_TOKEN ?= local-development-token-only
export FULFILLMENT_BASIC_AUTH ?= dialogflow:local-development-only
export FULFILLMENT_BILLING_API_URL ?= http://127.0.0.1:8082
export FULFILLMENT_BILLING_API_TOKEN ?= local-development-token-only
export LOG_FORMAT ?= text

.PHONY: help services run test lint fmt build bench bench-ingest bench-billing bench-entitlements bench-system chaos trigger validate-k8s audit fuzz

help:
	@echo "make run           bring up PostgreSQL, RabbitMQ, Redis and run the stack in the foreground"
	@echo "make test          every test (sets up what it needs)"
	@echo "make lint          rustfmt check and clippy -D warnings"
	@echo "make validate-k8s  render and check k8s/ and deploy/ offline (part of make test)"
	@echo "make audit         dependency audit: cargo-deny, npm audit, PyPI advisories (docs/security.md)"
	@echo "make bench         every benchmark; writes docs/benchmarks.md and quotes it in the README"
	@echo "make bench-ingest  ingest throughput against the raw broker publish-confirm rate"
	@echo "make bench-billing events applied per second against a pgbench baseline"
	@echo "make bench-entitlements  Check vs a bare tonic echo and a PostgreSQL query; revocation latency; credits/s"
	@echo "make bench-system  the whole system under webhook + Check load: rate, freshness, Check p99, final state"
	@echo "make chaos         bench-system with billing SIGKILLed and RabbitMQ, PostgreSQL, Redis restarted (STOPS THE REAL SERVICES)"
	@echo "make trigger EVENT=invoice.paid   send a signed sample event to the running ingest"
	@echo "make fuzz          every fuzz target for FUZZ_SECONDS (60) each (FUZZ_TARGETS=signature ...; docs/fuzzing.md)"

services:
	@scripts/ensure-services.sh

build:
	$(CARGO) build --workspace --bins

run: services build
	@scripts/run-local.sh

test: services
	@scripts/test.sh

validate-k8s:
	@scripts/validate-k8s.sh

audit:
	@scripts/audit.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --quiet -- -D warnings

fmt:
	$(CARGO) fmt --all

# The release binaries the benchmarks start (not the system-tests copies of them).
BENCH_BUILD = $(CARGO) build --release -p tollgate-bench -p tollgate-ingest -p tollgate-billing -p tollgate-entitlements --bins

bench: services
	$(BENCH_BUILD)
	$(CARGO_TARGET_DIR)/release/tollgate-bench all $(BENCH_ARGS)

bench-ingest: services
	$(BENCH_BUILD)
	$(CARGO_TARGET_DIR)/release/tollgate-bench ingest $(BENCH_ARGS)

bench-billing: services
	$(BENCH_BUILD)
	$(CARGO_TARGET_DIR)/release/tollgate-bench billing $(BENCH_ARGS)

bench-entitlements: services
	$(BENCH_BUILD)
	$(CARGO_TARGET_DIR)/release/tollgate-bench entitlements $(BENCH_ARGS)

bench-system: services
	$(BENCH_BUILD)
	$(CARGO_TARGET_DIR)/release/tollgate-bench system $(BENCH_ARGS)

# Stops and restarts this machine's PostgreSQL, RabbitMQ and Redis during the run
# (never part of `make test`); scripts/chaos.sh restores them however the run ends.
chaos: services
	$(BENCH_BUILD)
	@scripts/chaos.sh $(CHAOS_ARGS)

fuzz:
	@scripts/fuzz.sh $(FUZZ_TARGETS)

trigger:
	@$(CARGO) run --quiet --bin tollgate -- trigger $(or $(EVENT),invoice.paid)
