package openaitest

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestChatBody(t *testing.T) {
	require.Equal(t, `{"model":"m","messages":[{"role":"system","content":"be \"brief\""},{"role":"user","content":"hi"}],"max_tokens":4}`,
		ChatBody("m", `"max_tokens":4`, System(`be "brief"`), User("hi")))
	body := ChatBody("", "", User("<x>"))
	var got map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &got))
	require.Equal(t, map[string]any{"messages": []any{map[string]any{"role": "user", "content": "<x>"}}}, got)
}
