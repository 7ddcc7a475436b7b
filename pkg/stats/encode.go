package stats

import (
	"encoding/json"
	"strconv"
)

// AppendKVMessage appends the message {"type":"kv","kv":ev} to dst, byte
// for byte what encoding/json renders for Message{Type: TypeKV, KV: ev},
// without reflection: a queue-proxy sends one every flush of its KV
// deltas.
func AppendKVMessage(dst []byte, ev *KVEvent) []byte {
	dst = append(dst, `{"type":"kv","kv":{"pod":`...)
	dst = appendJSONString(dst, ev.Pod)
	dst = append(dst, `,"blockSize":`...)
	dst = strconv.AppendInt(dst, int64(ev.BlockSize), 10)
	dst = append(dst, `,"capacity":`...)
	dst = strconv.AppendInt(dst, int64(ev.Capacity), 10)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, ev.Seq, 10)
	if ev.Reset {
		dst = append(dst, `,"reset":true`...)
	}
	if len(ev.Added) > 0 {
		dst = appendUints(append(dst, `,"added":`...), ev.Added)
	}
	if len(ev.Removed) > 0 {
		dst = appendUints(append(dst, `,"removed":`...), ev.Removed)
	}
	return append(dst, "}}"...)
}

func appendUints(dst []byte, vs []uint64) []byte {
	dst = append(dst, '[')
	for i, v := range vs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = strconv.AppendUint(dst, v, 10)
	}
	return append(dst, ']')
}

// appendJSONString appends s as encoding/json quotes it: as is when it has
// only printable ASCII that needs no escape (a pod name always does),
// through encoding/json otherwise.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s) // a string always marshals
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
