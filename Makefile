GO ?= go
BIN := bin
BINARIES := kvasir activator queue-proxy engine-sim controller

.PHONY: all build test run vet fmt clean envtest-assets cluster-assets cluster cluster-down deploy

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

# kube-apiserver, etcd, kube-controller-manager and kubectl for the
# Kubernetes tests, built from the Go module proxy into a cache directory
# outside the repository (minutes the first time, nothing after).
envtest-assets:
	@hack/envtest-assets.sh >/dev/null

# The real single-node cluster's tools (ko, crane, CoreDNS, pause,
# mkimage), built from the module proxy into a cache directory; only where
# the cluster can run (Linux, root), as test/cluster is skipped elsewhere.
cluster-assets:
	@if [ "$$(uname -s)" = Linux ] && [ "$$(id -u)" = 0 ]; then hack/cluster-assets.sh >/dev/null; fi

# The peer engine of test/peer: llm-d-inference-sim, a vLLM-compatible
# simulator written outside this project, pinned in hack/peer/go.mod and built
# from the module proxy into a cache directory (minutes the first time,
# nothing after).
.PHONY: peer-assets
peer-assets:
	@hack/peer-assets.sh >/dev/null

# Debian's redis-server for the rate limiter's tests (pkg/testing/redistest),
# fetched with apt-get download and unpacked into a cache directory, not
# installed on the system (seconds the first time, nothing after).
.PHONY: redis-assets
redis-assets:
	@hack/redis-assets.sh >/dev/null

# A real single-node Kubernetes cluster on this machine (root; see
# docs/kubernetes.md): prints its kubeconfig. Then
#   . /var/lib/kvasir-cluster/env && ko apply -f config/
cluster:
	@hack/cluster-up.sh

# Tears the cluster down and removes everything it made.
cluster-down:
	@hack/cluster-down.sh

# test also runs every fuzz target's seed corpus (testdata/fuzz/, f.Add),
# the raw-I/O packages without -race (RAW_IO_PACKAGES),
# cross-compiles for macOS, where kvasir local and kvasir bench run too,
# and installs Kvasir with ko on a real cluster (test/cluster). vet builds
# with ko's flags (CGO_ENABLED=0, -trimpath) so that ko then only links.
test: envtest-assets cluster-assets peer-assets redis-assets
	CGO_ENABLED=0 GOFLAGS="$$GOFLAGS -trimpath" $(GO) vet ./...
	GOOS=darwin GOARCH=arm64 $(GO) build ./...
	GOOS=darwin GOARCH=arm64 $(GO) vet ./...
	KUBEBUILDER_ASSETS="$$(hack/envtest-assets.sh)" KVASIR_REDIS_SERVER="$$(hack/redis-assets.sh)" $(GO) test -race -count=1 -timeout=45m ./...
	$(GO) test -count=1 -timeout=10m $(RAW_IO_PACKAGES)

# The packages whose connections read and write with raw system calls
# (pkg/rawconn), tested again without -race: a race-detector build calls
# syscall.Read and syscall.Write instead (see pkg/rawconn).
RAW_IO_PACKAGES := ./pkg/rawconn/ ./pkg/httpserver/ ./pkg/upstream/ ./activator/ ./queueproxy/

# Runs every fuzz target (listed in hack/fuzz.sh) for FUZZTIME each, one
# after another; a failing input lands in its package's testdata/fuzz/.
# FUZZ picks targets by name (a regular expression), FUZZFLAGS adds go test
# flags (-parallel=1 on a shared machine); see docs/fuzzing.md.
FUZZTIME ?= 30s
FUZZ ?= .
FUZZFLAGS ?=

.PHONY: fuzz
fuzz:
	GO="$(GO)" FUZZTIME="$(FUZZTIME)" FUZZFLAGS="$(FUZZFLAGS)" hack/fuzz.sh '$(FUZZ)'

# Installs Kvasir on the current kubectl context (needs ko and a registry:
# KO_DOCKER_REPO).
deploy:
	ko apply -f config/

run: build
	@echo "Try: curl -s http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' -d '{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}'"
	$(BIN)/kvasir local -f examples/quickstart.yaml --addr 127.0.0.1:8080

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN)

# Code generation: deep-copy functions and the CRDs in config/, by
# controller-gen pinned in hack/tools/go.mod and built from the module proxy
# into ~/.cache/kvasir/tools on first use. CONTROLLER_GEN names a
# controller-gen binary to use instead. A test fails when the checked-in
# output is stale.
CONTROLLER_GEN ?=

.PHONY: generate
generate:
	CONTROLLER_GEN="$(CONTROLLER_GEN)" hack/tools/generate.sh
