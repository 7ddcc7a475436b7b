package runtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// recorder is a testing.TB that keeps its errors and cleanups.
type recorder struct {
	testing.TB
	errs     []string
	cleanups []func()
}

func (r *recorder) Helper()                   {}
func (r *recorder) Cleanup(f func())          { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(f string, a ...any) { r.errs = append(r.errs, f) }

func (r *recorder) end() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func TestGoStopsAtCleanup(t *testing.T) {
	r := &recorder{TB: t}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	Go(r, ctx, cancel, time.Minute, "loop", func(ctx context.Context) error {
		close(started)
		<-ctx.Done()
		return nil
	})
	<-started
	r.end()
	require.Empty(t, r.errs)
}

func TestGoReportsErrorAndHang(t *testing.T) {
	r := &recorder{TB: t}
	ctx, cancel := context.WithCancel(context.Background())
	Go(r, ctx, cancel, time.Minute, "failing", func(context.Context) error { return errors.New("boom") })
	release := make(chan struct{})
	defer close(release)
	ctx2, cancel2 := context.WithCancel(context.Background())
	Go(r, ctx2, cancel2, time.Millisecond, "stuck", func(context.Context) error { <-release; return nil })
	r.end()
	require.Equal(t, []string{"%s did not return", "%s: %v"}, r.errs)
}
