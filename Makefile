GO ?= go
BIN := bin
BINARIES := kvasir activator queue-proxy engine-sim

.PHONY: all build test run vet fmt clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

test:
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

run: build
	@echo "Try: curl -s http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' -d '{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}]}'"
	$(BIN)/kvasir local -f examples/quickstart.yaml --addr 127.0.0.1:8080

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN)
