package httpserver

import (
	"net/http"
	"time"
)

// ClientWriter writes a response to a client that may stop reading: each
// write must make progress within the timeout, or it fails and the handler
// learns that the client is gone (and cancels the work upstream). A client
// that merely waits between chunks, while the engine thinks, is never cut
// off: the deadline is armed when something is written, not while idle.
// Call Done before the handler returns.
type ClientWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	armed   time.Time
}

// NewClientWriter wraps w; a timeout of 0 arms no deadline.
func NewClientWriter(w http.ResponseWriter, timeout time.Duration) *ClientWriter {
	return &ClientWriter{w: w, rc: http.NewResponseController(w), timeout: timeout}
}

// arm moves the deadline to a timeout from now, at most every quarter of
// the timeout: a write that blocks fails after 3/4 to 4/4 of it.
func (c *ClientWriter) arm() {
	if c.timeout <= 0 {
		return
	}
	if now := time.Now(); now.Sub(c.armed) > c.timeout/4 {
		if c.rc.SetWriteDeadline(now.Add(c.timeout)) == nil {
			c.armed = now
		}
	}
}

// Write writes p to the client.
func (c *ClientWriter) Write(p []byte) (int, error) {
	c.arm()
	return c.w.Write(p)
}

// Flush sends what was written to the client.
func (c *ClientWriter) Flush() error {
	c.arm()
	return c.rc.Flush()
}

// Done clears the deadline: the connection may serve another request.
func (c *ClientWriter) Done() {
	if !c.armed.IsZero() {
		_ = c.rc.SetWriteDeadline(time.Time{})
	}
}
