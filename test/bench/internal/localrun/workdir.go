package localrun

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// Workdir is a benchmark's directories: a temporary one, for the kvasir
// binary it builds and the files it writes, and the one of the logs (the
// user's, or "logs" inside the temporary one). Close stops the platforms
// started with Start and removes the temporary directory unless a failed
// run keeps it; the user's log directory is never removed.
type Workdir struct {
	// Tmp is the temporary directory.
	Tmp string
	// LogDir receives the logs: the user's directory, or Tmp/logs.
	LogDir string
	// Binary is the kvasir binary: the one given, or the one built into Tmp.
	Binary string
	// Kept is what Close names when a failed run keeps Tmp ("logs kept:
	// DIR"); NewWorkdir sets it to LogDir.
	Kept string

	userLogs bool

	mu      sync.Mutex
	started []*Platform
}

// NewWorkdir makes a temporary directory named after prefix (as
// os.MkdirTemp does), takes logDir as the log directory when it is not
// empty, and builds kvasir into the temporary directory unless binary names
// one. On error nothing is left behind.
func NewWorkdir(ctx context.Context, prefix, binary, logDir string) (*Workdir, error) {
	tmp, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, fmt.Errorf("temporary directory: %w", err)
	}
	w := &Workdir{Tmp: tmp, LogDir: filepath.Join(tmp, "logs"), Binary: binary}
	if logDir != "" {
		w.LogDir, w.userLogs = logDir, true
	}
	w.Kept = w.LogDir
	if w.Binary == "" {
		if w.Binary, err = Build(ctx, tmp); err != nil {
			os.RemoveAll(tmp)
			return nil, err
		}
	}
	return w, nil
}

// Start starts `kvasir local` as the package's Start does, with the
// Workdir's Binary and LogDir where opts leave them empty; Close stops it.
func (w *Workdir) Start(opts Options) (*Platform, error) {
	if opts.Binary == "" {
		opts.Binary = w.Binary
	}
	if opts.LogDir == "" {
		opts.LogDir = w.LogDir
	}
	p, err := Start(opts)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.started = append(w.started, p)
	w.mu.Unlock()
	return p, nil
}

// Close stops every platform Start started (at once; those stopped already
// are not stopped again), then says where the logs are and removes Tmp:
// with the user's log directory it prints "logs: DIR"; when failed, it
// keeps Tmp and prints "logs kept: " and Kept. A nil Workdir does nothing.
func (w *Workdir) Close(failed bool) {
	if w == nil {
		return
	}
	w.mu.Lock()
	started := w.started
	w.started = nil
	w.mu.Unlock()
	StopAll(started)
	switch {
	case w.userLogs:
		fmt.Fprintf(os.Stderr, "logs: %s\n", w.LogDir)
		os.RemoveAll(w.Tmp)
	case failed:
		fmt.Fprintf(os.Stderr, "logs kept: %s\n", w.Kept)
	default:
		os.RemoveAll(w.Tmp)
	}
}
