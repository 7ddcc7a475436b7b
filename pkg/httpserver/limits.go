package httpserver

import (
	"errors"
	"flag"
	"fmt"
	"time"
)

// Limits bound what clients may hold of a listener. Zero values take the
// defaults of DefaultLimits.
type Limits struct {
	// ReadHeaderTimeout bounds reading a request's headers, from its first
	// byte (or the connection's start) to the blank line; a connection past
	// it is closed. Default 10s.
	ReadHeaderTimeout time.Duration
	// BodyReadTimeout bounds reading a whole request body once the headers
	// are in; past it the request is answered 408. Default 30s.
	BodyReadTimeout time.Duration
	// WriteTimeout bounds each write to a client: a client that takes
	// nothing of a response (a stream it never reads) for this long is cut
	// off and its request cancelled upstream. Default 60s.
	WriteTimeout time.Duration
	// IdleTimeout closes a kept-alive connection with no request for this
	// long. Default 5m.
	IdleTimeout time.Duration
	// MaxHeaderBytes limits the request line and headers (431 above it).
	// Default 64 KiB.
	MaxHeaderBytes int
	// MaxConnections caps the open connections; one more is answered 503
	// with Retry-After and closed. Default 10,000.
	MaxConnections int
	// BodyBudget is the memory, in bytes, that request bodies held at once
	// may take across all requests; a body that does not fit is answered
	// 503 with Retry-After. Default 64 MiB: two bodies of the largest
	// default size (32 MiB), or thousands of ordinary prompts.
	BodyBudget int64
}

// DefaultLimits returns the defaults.
func DefaultLimits() Limits {
	return Limits{
		ReadHeaderTimeout: 10 * time.Second,
		BodyReadTimeout:   30 * time.Second,
		WriteTimeout:      time.Minute,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		MaxConnections:    10000,
		BodyBudget:        64 << 20,
	}
}

// Validate checks the limits, naming the flag of a bad one.
func (l Limits) Validate() error {
	var errs []error
	if l.ReadHeaderTimeout <= 0 {
		errs = append(errs, fmt.Errorf("header-read-timeout: must be > 0, got %s", l.ReadHeaderTimeout))
	}
	if l.BodyReadTimeout <= 0 {
		errs = append(errs, fmt.Errorf("body-read-timeout: must be > 0, got %s", l.BodyReadTimeout))
	}
	if l.WriteTimeout <= 0 {
		errs = append(errs, fmt.Errorf("write-timeout: must be > 0, got %s", l.WriteTimeout))
	}
	if l.IdleTimeout <= 0 {
		errs = append(errs, fmt.Errorf("idle-timeout: must be > 0, got %s", l.IdleTimeout))
	}
	if l.MaxHeaderBytes < 4<<10 {
		errs = append(errs, fmt.Errorf("max-header-bytes: must be >= 4096, got %d", l.MaxHeaderBytes))
	}
	if l.MaxConnections < 1 {
		errs = append(errs, fmt.Errorf("max-connections: must be >= 1, got %d", l.MaxConnections))
	}
	if l.BodyBudget <= 0 {
		errs = append(errs, fmt.Errorf("body-memory-budget: must be > 0, got %d", l.BodyBudget))
	}
	return errors.Join(errs...)
}

// RegisterFlags binds the limits to flags of fs.
func RegisterFlags(fs *flag.FlagSet, l *Limits) {
	fs.DurationVar(&l.ReadHeaderTimeout, "header-read-timeout", l.ReadHeaderTimeout,
		"close a connection whose request headers take longer than this")
	fs.DurationVar(&l.BodyReadTimeout, "body-read-timeout", l.BodyReadTimeout,
		"answer 408 to a request whose body takes longer than this to arrive")
	fs.DurationVar(&l.WriteTimeout, "write-timeout", l.WriteTimeout,
		"cut off a client that takes nothing of its response (a stream it does not read) for this long")
	fs.DurationVar(&l.IdleTimeout, "idle-timeout", l.IdleTimeout, "close kept-alive connections idle for this long")
	fs.IntVar(&l.MaxHeaderBytes, "max-header-bytes", l.MaxHeaderBytes, "largest request line and headers (431 above)")
	fs.IntVar(&l.MaxConnections, "max-connections", l.MaxConnections,
		"open connections at most; one more is answered 503 and closed")
	fs.Int64Var(&l.BodyBudget, "body-memory-budget", l.BodyBudget,
		"bytes that request bodies held in memory may take at once, across all requests (503 above)")
}
