package stats

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzDecode checks the subscribers' reading of a stats stream message on
// any input: no panic; a message is either skipped or carries exactly the
// body its type names; and it encodes and decodes back to itself.
// `go test` runs the seeds (f.Add and testdata/fuzz/FuzzDecode/); `make
// fuzz` explores.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"type":"stat","stat":{"pod":"p","time":"2025-01-02T03:04:05.123456789+01:00","ready":true,"inFlight":3,` +
			`"requests":10,"ttftSecondsSum":1.5,"engine":{"scraped":true,"kvCacheUsage":0.5,"loraAdapters":["a"]}}}`,
		`{"type":"kv","kv":{"pod":"p","blockSize":16,"capacity":100,"seq":1,"reset":true,"added":[1,18446744073709551615]}}`,
		`{"type":"kv","kv":{"pod":"p","blockSize":16,"seq":2,"removed":[1]},"stat":{"pod":"p"}}`,
		`{"type":"future-kind","future":{}}`, `{"type":"kv"}`, `{"type":"stat","stat":null}`,
		`{"type":"kv","kv":{"added":[-1]}}`, `{"type":"stat","stat":{"time":"not a time"}}`, `[]`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, ok, err := Decode(data)
		if err != nil || !ok {
			require.Equal(t, Message{}, m)
			if err == nil {
				require.True(t, json.Valid(data))
			}
			return
		}
		switch m.Type {
		case TypeStat:
			require.NotNil(t, m.Stat)
			require.Nil(t, m.KV)
		case TypeKV:
			require.NotNil(t, m.KV)
			require.Nil(t, m.Stat)
		default:
			t.Fatalf("message of type %q not skipped", m.Type)
		}
		b, err := json.Marshal(m)
		require.NoError(t, err)
		again, ok, err := Decode(b)
		require.NoError(t, err)
		require.True(t, ok)
		b2, err := json.Marshal(again)
		require.NoError(t, err)
		require.JSONEq(t, string(b), string(b2))
	})
}
