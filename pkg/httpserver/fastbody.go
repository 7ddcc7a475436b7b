package httpserver

import (
	"io"
	"math/bits"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// Pooled body buffers come in power-of-two classes from minPooled to
// maxPooled bytes; a larger body is allocated for itself and left to the GC.
const (
	minPooledShift = 10 // 1 KiB
	maxPooledShift = 20 // 1 MiB
)

var bodyPools [maxPooledShift - minPooledShift + 1]sync.Pool

// getBuf returns a pooled buffer of capacity at least n (n ≤ 1 MiB), or nil
// for a larger n.
func getBuf(n int) *[]byte {
	shift := minPooledShift
	if n > 1<<minPooledShift {
		shift = bits.Len(uint(n - 1))
	}
	if shift > maxPooledShift {
		return nil
	}
	if v := bodyPools[shift-minPooledShift].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:0]
		return b
	}
	b := make([]byte, 0, 1<<shift)
	return &b
}

// putBuf gives a buffer from getBuf back.
func putBuf(b *[]byte) {
	shift := bits.Len(uint(cap(*b))) - 1
	if cap(*b) != 1<<shift || shift < minPooledShift || shift > maxPooledShift {
		return
	}
	bodyPools[shift-minPooledShift].Put(b)
}

// ReadRequest reads the body of a fasthttp request (served by FastServer,
// which streams bodies) into b, within MaxBytes, the budget and Timeout
// (from now), as Read does for net/http. The memory is pooled: b.Release
// gives it back, and b.Bytes must not be used after that. A body with a
// Content-Length takes its length from the budget before a byte is read;
// a chunked one takes it as it grows.
func (br *BodyReader) ReadRequest(ctx *fasthttp.RequestCtx, b *Body) *Failure {
	*b = Body{budget: br.Budget}
	length := int64(ctx.Request.Header.ContentLength())
	if length < -1 {
		length = 0 // no body
	}
	if length > br.MaxBytes {
		return &Failure{Status: fasthttp.StatusRequestEntityTooLarge, Err: openai.ErrBodyTooLarge}
	}
	rd := ctx.RequestBodyStream()
	if length == 0 || rd == nil {
		return nil
	}
	if length > 0 && br.Budget != nil && !br.Budget.TryAcquire(length) {
		return &Failure{Status: fasthttp.StatusServiceUnavailable, Err: ErrBodyBudget, RetryAfter: time.Second}
	}
	b.reserved = max(length, 0)
	if br.Timeout > 0 && (length < 0 || length > maxPrefetch) {
		// fasthttp sets the connection's read deadline again before it
		// reads the next request.
		_ = ctx.Conn().SetReadDeadline(time.Now().Add(br.Timeout))
	}
	return br.readPooled(rd, length, b)
}

// readPooled is read with pooled buffers.
func (br *BodyReader) readPooled(rd io.Reader, length int64, b *Body) *Failure {
	fail := func(f *Failure) *Failure {
		b.Release()
		return f
	}
	limit := br.MaxBytes + 1 // one more byte tells a body of unknown length over the limit
	first := min(limit, firstChunk)
	if length >= 0 {
		limit, first = length, length
	}
	b.grow(int(first))
	buf := b.Bytes
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) >= limit {
				break // a body with a length is read to it; one without is too large
			}
			next := min(max(2*int64(cap(buf)), firstChunk), limit)
			if length < 0 && !b.reserve(next-b.reserved) {
				return fail(&Failure{Status: fasthttp.StatusServiceUnavailable, Err: ErrBodyBudget, RetryAfter: time.Second})
			}
			b.Bytes = buf
			b.grow(int(next))
			buf = b.Bytes
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			return fail(readFailure(err))
		}
	}
	b.Bytes = buf
	if length < 0 && int64(len(buf)) > br.MaxBytes {
		return fail(&Failure{Status: fasthttp.StatusRequestEntityTooLarge, Err: openai.ErrBodyTooLarge})
	}
	if length >= 0 && int64(len(buf)) < length {
		return fail(readFailure(io.ErrUnexpectedEOF))
	}
	return nil
}

// grow makes b.Bytes hold at least n bytes of capacity, keeping its
// contents, from the pools when n is small enough.
func (b *Body) grow(n int) {
	if cap(b.Bytes) >= n {
		return
	}
	old, oldPooled := b.Bytes, b.pooled
	if p := getBuf(n); p != nil {
		b.pooled = p
		b.Bytes = append((*p)[:0], old...)
	} else {
		b.pooled = nil
		b.Bytes = append(make([]byte, 0, n), old...)
	}
	if oldPooled != nil {
		putBuf(oldPooled)
	}
}
