GO ?= go
BIN := bin
BINARIES := kvasir activator queue-proxy engine-sim

.PHONY: all build test run vet fmt clean envtest-assets

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

# kube-apiserver and etcd for the Kubernetes tests, built from the Go module
# proxy into a cache directory outside the repository (minutes the first
# time, nothing after).
envtest-assets:
	@hack/envtest-assets.sh >/dev/null

test: envtest-assets
	$(GO) vet ./...
	KUBEBUILDER_ASSETS="$$(hack/envtest-assets.sh)" $(GO) test -race -count=1 ./...

run: build
	@echo "Try: curl -s http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' -d '{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}'"
	$(BIN)/kvasir local -f examples/quickstart.yaml --addr 127.0.0.1:8080

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN)
