// Package promtest reads metrics back in tests (and benchmark programs),
// from a registry or from families parsed off a /metrics page (Scrape).
package promtest
