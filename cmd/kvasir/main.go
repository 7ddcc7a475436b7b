// Command kvasir is the Kvasir CLI: `kvasir local` runs the whole platform on
// one machine; `kvasir sim` runs the engine simulator; `kvasir queue-proxy`
// runs the sidecar (local mode starts replicas with it).
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
	err := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kvasir:", err)
		os.Exit(cli.ExitCode(err))
	}
}
