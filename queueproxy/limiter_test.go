package queueproxy

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLimiterFIFO(t *testing.T) {
	l := newLimiter(1, 2)
	ctx := testCtx(t)
	require.NoError(t, l.acquire(ctx))

	order := make(chan int, 2)
	for i := range 2 {
		go func() {
			if err := l.acquire(ctx); err == nil {
				order <- i
			}
		}()
		require.Eventually(t, func() bool { return l.queued() == i+1 }, waitFor, tick)
	}
	assert.ErrorIs(t, l.acquire(ctx), errQueueFull)

	l.release()
	assert.Equal(t, 0, recv(t, order, "first waiter"))
	assert.Equal(t, 1, l.queued())
	l.release()
	assert.Equal(t, 1, recv(t, order, "second waiter"))
	l.release()
	require.NoError(t, l.acquire(ctx), "all slots back")
}

func TestLimiterCancelLeavesQueue(t *testing.T) {
	l := newLimiter(1, 1)
	require.NoError(t, l.acquire(testCtx(t)))
	ctx, cancel := context.WithCancel(testCtx(t))
	errs := make(chan error, 1)
	go func() { errs <- l.acquire(ctx) }()
	require.Eventually(t, func() bool { return l.queued() == 1 }, waitFor, tick)
	cancel()
	assert.ErrorIs(t, recv(t, errs, "cancelled waiter"), context.Canceled)
	assert.Equal(t, 0, l.queued())

	l.release()
	require.NoError(t, l.acquire(testCtx(t)), "the slot was not lost")
}

func TestLimiterZeroDepth(t *testing.T) {
	l := newLimiter(1, 0)
	require.NoError(t, l.acquire(testCtx(t)))
	assert.ErrorIs(t, l.acquire(testCtx(t)), errQueueFull)
}
