// Package openai owns the OpenAI wire details shared by every Kvasir component:
// the error shape, the few request fields the data plane routes on, and SSE framing.
//
// Request bodies are never re-encoded: Parse indexes top-level keys in the raw
// JSON so a component reads what it routes on and passes the rest through byte
// for byte, and Set/Delete splice single keys in place when a hop must change one.
package openai
