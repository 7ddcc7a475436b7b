// Package promtest reads metrics back in tests, from a registry or from
// families parsed off a /metrics page.
package promtest
