package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	tail := " S 1 2 3 0 -1 4194560 100 0 0 0 %s %s 0 0 20 0 4 0 123 456 789"
	line := func(comm, utime, stime string) []byte {
		return []byte("42 (" + comm + ")" + strings.ReplaceAll(strings.Replace(tail, "%s", utime, 1), "%s", stime))
	}
	tests := []struct {
		name      string
		in        []byte
		wantPPID  int
		wantTicks int64
		wantErr   bool
	}{
		{name: "plain", in: line("nginx", "150", "50"), wantPPID: 1, wantTicks: 200},
		{name: "spaces and parentheses in the name", in: line("a) S 9 9 (b", "7", "3"), wantPPID: 1, wantTicks: 10},
		{name: "zero", in: line("x", "0", "0"), wantPPID: 1},
		{name: "huge", in: line("x", "9223372036854775807", "0"), wantPPID: 1, wantTicks: 9223372036854775807},
		{name: "no parenthesis", in: []byte("42 nginx S 1 2 3"), wantErr: true},
		{name: "truncated", in: []byte("42 (nginx) S 1 2 3 0 -1"), wantErr: true},
		{name: "empty", in: nil, wantErr: true},
		{name: "negative ticks", in: line("x", "-5", "0"), wantErr: true},
		{name: "not a number", in: line("x", "1e3", "0"), wantErr: true},
		{name: "overflowing ticks", in: line("x", "99999999999999999999", "0"), wantErr: true},
		{name: "bad ppid", in: []byte("42 (x) S one 2 3 0 -1 4194560 100 0 0 0 1 1 0 0"), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseProcStat(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (got.ppid != tt.wantPPID || got.ticks != tt.wantTicks) {
				t.Errorf("got %+v, want ppid %d ticks %d", got, tt.wantPPID, tt.wantTicks)
			}
		})
	}
}

func TestTreeCPUOfThisProcess(t *testing.T) {
	m := cpuMeter{hz: userHZ()}
	before, err := m.treeCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn CPU until the counter moves (one tick is 10 ms at USER_HZ 100).
	deadline := time.Now().Add(10 * time.Second)
	x := 0
	for time.Now().Before(deadline) {
		for i := 0; i < 1_000_000; i++ {
			x += i
		}
		after, err := m.treeCPU(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if after > before {
			return
		}
	}
	t.Fatalf("CPU time did not move in 10 s of work (%d)", x)
}

func TestTreeCPUOfNoProcess(t *testing.T) {
	if _, err := (cpuMeter{hz: 100}).treeCPU(-1); err == nil {
		t.Fatal("want an error for pid -1")
	}
}
