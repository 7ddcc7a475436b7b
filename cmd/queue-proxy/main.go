package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/kvasir-serving/kvasir/pkg/maxprocs"
	"github.com/kvasir-serving/kvasir/queueproxy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	go maxprocs.Run(ctx, maxprocs.Config{}, slog.Default())
	err := queueproxy.Main(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
