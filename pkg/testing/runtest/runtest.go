package runtest

import (
	"context"
	"testing"
	"time"
)

// Go runs run(ctx) in a goroutine until the test ends: the test's cleanup
// calls cancel, then fails the test if run returns an error or does not
// return within timeout. what names run in that failure.
func Go(t testing.TB, ctx context.Context, cancel context.CancelFunc, timeout time.Duration, what string, run func(context.Context) error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v", what, err)
			}
		case <-time.After(timeout):
			t.Errorf("%s did not return", what)
		}
	})
}
