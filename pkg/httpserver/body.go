package httpserver

import (
	"errors"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// Failure is the answer to a request whose body could not be read.
type Failure struct {
	Status     int
	Err        openai.Error
	RetryAfter time.Duration
}

// Write answers the failure. A body not read to its end leaves the
// connection in an unknown state: it is closed after the answer.
func (f *Failure) Write(w http.ResponseWriter) {
	if f.Status == http.StatusRequestTimeout || f.Status == http.StatusServiceUnavailable {
		w.Header().Set("Connection", "close")
	}
	openai.WriteError(w, f.Status, f.Err, f.RetryAfter)
}

// Errors of reading a body, as clients see them.
var (
	ErrBodyTimeout = openai.Err(openai.TypeTimeout, "request_body_timeout",
		"the request body did not arrive within the body read timeout")
	ErrBodyBudget = openai.Err(openai.TypeUnavailable, "server_overloaded",
		"the server holds too many request bodies at once; retry shortly")
)

// BodyReader reads whole request bodies into memory within a size limit, a
// time limit and a shared memory budget.
type BodyReader struct {
	// MaxBytes limits one body (413 above it).
	MaxBytes int64
	// Timeout bounds reading the whole body (408 past it); 0 = none.
	Timeout time.Duration
	// Budget is shared by every body held at once (503 when full); nil =
	// unbounded.
	Budget *Budget
}

// Body is a request body held in memory; Release gives its memory back to
// the budget when the request no longer needs it.
type Body struct {
	Bytes    []byte
	budget   *Budget
	reserved int64
	pooled   *[]byte // the pooled buffer under Bytes (ReadRequest); nil when not pooled
}

// Release returns the body's share of the budget. It may be called more
// than once; Bytes must not be used after it.
func (b *Body) Release() {
	if b.budget != nil && b.reserved > 0 {
		b.budget.Release(b.reserved)
		b.reserved = 0
	}
	if b.pooled != nil {
		putBuf(b.pooled)
		b.pooled, b.Bytes = nil, nil
	}
}

// firstChunk is the first allocation for a body of unknown length, and the
// step by which its reservation grows.
const firstChunk = 16 << 10

// Read reads r's body. A body with a Content-Length takes its length from
// the budget before a byte is read; one without (chunked) takes it as it
// grows. Resident memory grows only with what arrives, never with what a
// client merely announces.
func (br *BodyReader) Read(w http.ResponseWriter, r *http.Request) (*Body, *Failure) {
	if r.ContentLength > br.MaxBytes {
		return nil, &Failure{Status: http.StatusRequestEntityTooLarge, Err: openai.ErrBodyTooLarge}
	}
	if r.ContentLength > 0 && br.Budget != nil && !br.Budget.TryAcquire(r.ContentLength) {
		return nil, &Failure{Status: http.StatusServiceUnavailable, Err: ErrBodyBudget, RetryAfter: time.Second}
	}
	if br.Timeout > 0 {
		rc := http.NewResponseController(w)
		// A recorder in tests supports no deadline; a real server always does.
		if rc.SetReadDeadline(time.Now().Add(br.Timeout)) == nil {
			// The deadline must not outlive the body: net/http's
			// background read would take it for the client leaving.
			defer rc.SetReadDeadline(time.Time{})
		}
	}
	return br.read(r.Body, r.ContentLength)
}

// ReadMessage reads a whole message of unknown length from rd (a WebSocket
// message, say) within MaxBytes and the budget. The caller bounds the time
// it may take (a read deadline on its connection).
func (br *BodyReader) ReadMessage(rd io.Reader) (*Body, *Failure) { return br.read(rd, -1) }

// read reads a body of the given length (-1: unknown). A known length was
// taken from the budget by the caller.
func (br *BodyReader) read(rd io.Reader, length int64) (*Body, *Failure) {
	b := &Body{budget: br.Budget, reserved: max(length, 0)}
	limit := br.MaxBytes + 1 // one more byte tells a body of unknown length over the limit
	// A body of known length, its memory already taken from the budget,
	// is allocated once: a fresh allocation's pages become resident only
	// as bytes arrive, and no doubling leaves garbage behind. One of
	// unknown length grows as it arrives.
	buf := make([]byte, 0, min(limit, firstChunk))
	if length >= 0 {
		limit = length
		buf = make([]byte, 0, length)
	}
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) >= limit {
				break // a body with a length is read to it; one without is too large
			}
			next := min(max(2*int64(cap(buf)), firstChunk), limit)
			if length < 0 && !b.reserve(next-b.reserved) {
				b.Release()
				return nil, &Failure{Status: http.StatusServiceUnavailable, Err: ErrBodyBudget, RetryAfter: time.Second}
			}
			buf = append(buf, make([]byte, next-int64(len(buf)))...)[:len(buf)]
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Release()
			return nil, readFailure(err)
		}
	}
	if length < 0 && int64(len(buf)) > br.MaxBytes {
		b.Release()
		return nil, &Failure{Status: http.StatusRequestEntityTooLarge, Err: openai.ErrBodyTooLarge}
	}
	b.Bytes = buf
	return b, nil
}

func (b *Body) reserve(n int64) bool {
	if b.budget == nil || n <= 0 {
		b.reserved += max(n, 0)
		return true
	}
	if !b.budget.TryAcquire(n) {
		return false
	}
	b.reserved += n
	return true
}

func readFailure(err error) *Failure {
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return &Failure{Status: http.StatusRequestTimeout, Err: ErrBodyTimeout}
	}
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return &Failure{Status: http.StatusRequestEntityTooLarge, Err: openai.ErrBodyTooLarge}
	}
	return &Failure{Status: http.StatusBadRequest, Err: openai.Err(openai.TypeInvalidRequest, "body_read_failed",
		"reading the request body: "+err.Error())}
}
