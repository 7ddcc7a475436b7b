package stats

import (
	"encoding/json"
	"fmt"
)

// Decode reads one message of the stats stream. A message of a kind this
// version does not know, or without the body its type names, has ok false
// and no error: readers skip it. A known message carries only the body its
// type names (Stat for TypeStat, KV for TypeKV), a Stat's model cards
// within the bounds of BoundModelCards. An error means the peer
// sent something that is not a message at all.
//
// KV messages in the shape queue-proxies send (sent every few tens of
// milliseconds) are read by a dedicated decoder; everything else, and any
// KV message it does not take, by encoding/json, with the same result.
func Decode(data []byte) (m Message, ok bool, err error) {
	if m, ok := decodeKV(data); ok {
		return m, true, nil
	}
	return decodeJSON(data)
}

// decodeJSON is Decode with encoding/json alone: what the KV decoder's
// result must equal on every input it takes.
func decodeJSON(data []byte) (m Message, ok bool, err error) {
	if err := json.Unmarshal(data, &m); err != nil {
		return Message{}, false, fmt.Errorf("decode stats message: %w", err)
	}
	switch {
	case m.Type == TypeStat && m.Stat != nil:
		m.KV = nil
		// A queue-proxy bounds its engine's model cards; a reader does not
		// rely on it.
		m.Stat.Engine.Models = BoundModelCards(m.Stat.Engine.Models)
	case m.Type == TypeKV && m.KV != nil:
		m.Stat = nil
	default:
		return Message{}, false, nil
	}
	return m, true, nil
}
