package localrun

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Stat(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return err == nil
}

func TestWorkdirClose(t *testing.T) {
	for _, tc := range []struct {
		name             string
		userLogs, failed bool
		wantTmp          bool
	}{
		{name: "passed", wantTmp: false},
		{name: "failed keeps", failed: true, wantTmp: true},
		{name: "user's logs, passed", userLogs: true, wantTmp: false},
		{name: "user's logs, failed", userLogs: true, failed: true, wantTmp: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logDir := ""
			if tc.userLogs {
				logDir = filepath.Join(t.TempDir(), "mine")
			}
			w, err := NewWorkdir(context.Background(), "kvasir-localrun-test-", fakeKvasir(t, "exec sleep 60"), logDir)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(w.Tmp) })
			if tc.userLogs && w.LogDir != logDir || !tc.userLogs && w.LogDir != filepath.Join(w.Tmp, "logs") {
				t.Errorf("LogDir = %q (Tmp %q)", w.LogDir, w.Tmp)
			}
			if w.Kept != w.LogDir {
				t.Errorf("Kept = %q, want LogDir %q", w.Kept, w.LogDir)
			}
			p, err := w.Start(Options{File: "f"})
			if err != nil {
				t.Fatal(err)
			}
			if filepath.Dir(p.LogFile) != w.LogDir {
				t.Errorf("LogFile %q not in LogDir %q", p.LogFile, w.LogDir)
			}
			w.Close(tc.failed)
			select {
			case <-p.exited:
			default:
				t.Error("Close left the platform running")
			}
			if err := p.Alive(); err != nil {
				t.Errorf("Alive after Close: %v", err)
			}
			if got := exists(t, w.Tmp); got != tc.wantTmp {
				t.Errorf("Tmp exists = %v, want %v", got, tc.wantTmp)
			}
			if tc.userLogs && !exists(t, filepath.Join(logDir, "kvasir-local.log")) {
				t.Error("the user's logs were removed")
			}
			w.Close(tc.failed) // again: nothing more to stop
		})
	}
}

func TestWorkdirNilAndFailedStart(t *testing.T) {
	var w *Workdir
	w.Close(true)

	w, err := NewWorkdir(context.Background(), "kvasir-localrun-test-", filepath.Join(t.TempDir(), "missing"), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Start(Options{File: "f"}); err == nil {
		t.Fatal("Start of a missing binary succeeded")
	}
	if len(w.started) != 0 {
		t.Errorf("a failed Start was recorded: %d", len(w.started))
	}
	w.Close(false)
	if exists(t, w.Tmp) {
		t.Error("Close(false) left Tmp")
	}
}
