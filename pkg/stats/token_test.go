package stats

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TokenFile reads the mounted token at each call: a new value (the kubelet
// refreshed the Secret) is used from the next dial; a missing or empty
// file is an error, not an empty token.
func TestTokenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	token := TokenFile(path)
	_, err := token()
	require.ErrorIs(t, err, os.ErrNotExist)

	require.NoError(t, os.WriteFile(path, []byte("abc\n"), 0o600))
	got, err := token()
	require.NoError(t, err)
	require.Equal(t, "abc", got)

	require.NoError(t, os.WriteFile(path, []byte("def"), 0o600))
	got, err = token()
	require.NoError(t, err)
	require.Equal(t, "def", got)

	require.NoError(t, os.WriteFile(path, []byte(" \n"), 0o600))
	_, err = token()
	require.ErrorContains(t, err, "empty")
}
