package redistest

import "testing"

func TestStartKillRestart(t *testing.T) {
	s := Start(t)
	if err := Ping(s.Addr); err != nil {
		t.Fatalf("Ping after Start: %v", err)
	}
	s.Kill(t)
	if err := Ping(s.Addr); err == nil {
		t.Fatal("Ping after Kill: want an error, got PONG")
	}
	s.Restart(t)
	if err := Ping(s.Addr); err != nil {
		t.Fatalf("Ping after Restart: %v", err)
	}
}
