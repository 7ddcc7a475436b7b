package scheduler

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// After Release a request's prompt reads fail loudly rather than look
// empty: its buffers went back to their pools.
func TestReadsAfterReleaseFail(t *testing.T) {
	r := chatRequest(t, "a system prompt", "a prompt long enough for a block or two of hashes")
	text, err := r.Text()
	require.NoError(t, err)
	require.NotEmpty(t, text)
	require.NotEmpty(t, r.Hashes(4))
	r.Release()
	_, err = r.Text()
	require.ErrorIs(t, err, errReleased)
	require.Nil(t, r.Hashes(4))
	require.Zero(t, r.PromptTokens())
	r.Release() // twice: nothing more
}
