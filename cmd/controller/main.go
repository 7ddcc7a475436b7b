// Command controller runs Kvasir's Kubernetes controller: ModelServices
// into ModelRevisions, revisions into Deployments and Services.
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
	err := cli.ControllerMain(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "controller:", err)
		os.Exit(cli.ExitCode(err))
	}
}
