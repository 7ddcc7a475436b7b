// Command pause is the pod sandbox's process in the test cluster: it waits
// for SIGTERM or SIGINT and exits 0, and reaps nothing (each container has
// its own init).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
