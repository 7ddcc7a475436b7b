// Command activator runs the Kvasir activator: on Kubernetes, fed by the
// cluster's ModelServices, ModelRevisions and EndpointSlices,
//
//	activator --kubernetes --addr :8080
//
// or in front of static queue-proxies:
//
//	activator --model demo --backend 127.0.0.1:8012 --backend 127.0.0.1:8013
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kvasir-serving/kvasir/pkg/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := cli.ActivatorMain(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "activator:", err)
		os.Exit(cli.ExitCode(err))
	}
}
