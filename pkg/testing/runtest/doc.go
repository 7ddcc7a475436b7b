// Package runtest runs a test's background loops (a subscriber's or a
// server's Run) for the length of the test, and checks at cleanup that
// they stop cleanly.
package runtest
