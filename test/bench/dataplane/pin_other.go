//go:build !linux

package main

import (
	"errors"
	"os/exec"
)

// cpuSplit pins processes to CPUs on Linux only.
type cpuSplit struct{ hops, rest struct{} }

func splitCPUs() (*cpuSplit, error) { return nil, errors.New("--pin: Linux only") }

func (s *cpuSplit) pinSelf() error { return nil }

func startOn(_ struct{}, cmd *exec.Cmd) error { return cmd.Start() }
