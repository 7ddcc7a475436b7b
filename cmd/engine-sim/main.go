// Command engine-sim is the vLLM-compatible engine simulator (see pkg/sim
// and docs/simulator.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kvasir-serving/kvasir/pkg/sim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := sim.Main(ctx, os.Args[1:], os.Stderr)
	stop()
	if exit, ok := errors.AsType[*sim.ExitError](err); ok {
		os.Exit(exit.Code)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
