package localrun

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/local"
)

// fakeKvasir writes a shell script that stands in for the kvasir binary:
// it ignores its arguments and runs body.
func fakeKvasir(t *testing.T, body string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kvasir")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestTail(t *testing.T) {
	many := strings.Repeat("x\n", 100000) + "last\n"
	for _, tc := range []struct {
		name, content string
		missing       bool
		n             int
		want          string
	}{
		{name: "missing file", missing: true, n: 3, want: ""},
		{name: "empty", content: "", n: 3, want: ""},
		{name: "only newlines", content: "\n\n\n", n: 3, want: ""},
		{name: "fewer lines than n", content: "a\nb\n", n: 3, want: "a\nb"},
		{name: "more lines than n", content: "a\nb\nc\nd\n", n: 2, want: "c\nd"},
		{name: "no final newline", content: "a\nb\nc", n: 2, want: "b\nc"},
		{name: "huge", content: many, n: 2, want: "x\nlast"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "log")
			if !tc.missing {
				if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := Tail(path, tc.n); got != tc.want {
				t.Errorf("Tail = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSummary(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   []local.RevisionStatus
		want string
	}{
		{name: "none", st: nil, want: "none"},
		{name: "one", st: []local.RevisionStatus{{Service: "demo", Role: "unified", Desired: 2, Ready: 1}},
			want: "demo/unified desired 2 ready 1 unplaceable 0"},
		{name: "two, forged names kept on one line", st: []local.RevisionStatus{
			{Service: "a", Role: "prefill", Unplaceable: 3}, {Service: "b;c", Role: "decode"}},
			want: "a/prefill desired 0 ready 0 unplaceable 3; b;c/decode desired 0 ready 0 unplaceable 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := summary(tc.st); got != tc.want {
				t.Errorf("summary = %q, want %q", got, tc.want)
			}
		})
	}
}

// fakeAdmin serves /kvasir/replicas with the answers in turn, the last one
// again and again.
func fakeAdmin(t *testing.T, answers ...func(http.ResponseWriter)) string {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/kvasir/replicas" {
			http.NotFound(w, r)
			return
		}
		i := min(int(n.Add(1))-1, len(answers)-1)
		answers[i](w)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func body(s string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) { _, _ = w.Write([]byte(s)) }
}

func status(code int) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) { w.WriteHeader(code) }
}

func TestWait(t *testing.T) {
	oneReady := `[{"service":"demo","role":"unified","desired":1,"ready":1}]`
	anyReady := func(st []local.RevisionStatus) bool {
		for _, r := range st {
			if r.Ready > 0 {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		name    string
		answers []func(http.ResponseWriter)
		wantErr string // "" for none
	}{
		{name: "ready at once", answers: []func(http.ResponseWriter){body(oneReady)}},
		{name: "malformed, error status, then ready", answers: []func(http.ResponseWriter){
			body(`[{"service":`), status(http.StatusInternalServerError), body(`"not a list"`), body(oneReady)}},
		{name: "never readable", answers: []func(http.ResponseWriter){status(http.StatusServiceUnavailable)},
			wantErr: "last read error: /kvasir/replicas: 503"},
		{name: "huge garbage", answers: []func(http.ResponseWriter){body(strings.Repeat("[", 1<<20))},
			wantErr: "last read error"},
		{name: "readable, never ready", answers: []func(http.ResponseWriter){body(`[{"service":"demo","role":"unified","desired":1}]`)},
			wantErr: "replicas: demo/unified desired 1 ready 0 unplaceable 0"},
		{name: "readable, empty", answers: []func(http.ResponseWriter){body(`[]`)}, wantErr: "replicas: none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Platform{Admin: fakeAdmin(t, tc.answers...), exited: make(chan struct{})}
			err := p.Wait(context.Background(), 300*time.Millisecond, time.Millisecond, "a ready replica", anyReady)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Wait: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "waiting for a ready replica")):
				t.Fatalf("Wait = %v, want an error naming the condition and %q", err, tc.wantErr)
			}
		})
	}
}

func TestWaitEndsWithContext(t *testing.T) {
	p := &Platform{Admin: fakeAdmin(t, body(`[]`)), exited: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := p.Wait(ctx, time.Hour, time.Hour, "never", func([]local.RevisionStatus) bool { return false })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait = %v, want context.Canceled", err)
	}
}

func TestStartAndStop(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "logs")
	p, err := Start(Options{Binary: fakeKvasir(t, "exec sleep 60"), File: "fleet.yaml", LogDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if p.PID() <= 0 || !strings.HasPrefix(p.Base, "http://127.0.0.1:") || !strings.HasPrefix(p.Admin, "http://127.0.0.1:") || p.Base == p.Admin {
		t.Errorf("PID %d, Base %q, Admin %q", p.PID(), p.Base, p.Admin)
	}
	if p.LogFile != filepath.Join(dir, "kvasir-local.log") {
		t.Errorf("LogFile = %q", p.LogFile)
	}
	if err := p.Alive(); err != nil {
		t.Errorf("Alive while running: %v", err)
	}
	p.Stop()
	p.Stop() // again: nothing
	if err := p.Alive(); err != nil {
		t.Errorf("Alive after Stop: %v", err)
	}
	var nilPlatform *Platform
	nilPlatform.Stop()
	StopAll([]*Platform{nil, p})
}

func TestExitSeenByAliveAndWait(t *testing.T) {
	dir := t.TempDir()
	p, err := Start(Options{Binary: fakeKvasir(t, `echo "started $*"; echo "boom from $KVASIR_LOCALRUN_TEST"; exit 3`),
		File: "fleet.yaml", LogDir: dir, Flags: []string{"--scale-interval", "1s"}, Env: []string{"KVASIR_LOCALRUN_TEST=the env"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	// Nothing listens on Admin: Wait returns once the process has exited.
	err = p.Wait(context.Background(), time.Minute, 5*time.Millisecond, "never", func([]local.RevisionStatus) bool { return false })
	argv := "started local -f fleet.yaml --addr " + strings.TrimPrefix(p.Base, "http://") + " --admin-addr " +
		strings.TrimPrefix(p.Admin, "http://") + " --log-dir " + dir + " --scale-interval 1s"
	if err == nil || !strings.Contains(err.Error(), "exited unexpectedly") || !strings.Contains(err.Error(), "exit status 3") ||
		!strings.Contains(err.Error(), argv) || !strings.Contains(err.Error(), "boom from the env") {
		t.Fatalf("Wait = %v, want the exit with the log's end: %q and the env", err, argv)
	}
	if err := p.Alive(); err == nil {
		t.Error("Alive = nil after an exit without Stop")
	}
}

func TestStartFails(t *testing.T) {
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{name: "no such binary", opts: Options{Binary: filepath.Join(t.TempDir(), "missing"), File: "f", LogDir: t.TempDir()}},
		{name: "log dir is a file", opts: Options{Binary: fakeKvasir(t, "exec sleep 60"), File: "f", LogDir: notDir}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if p, err := Start(tc.opts); err == nil {
				p.Stop()
				t.Fatal("Start succeeded")
			}
		})
	}
}
