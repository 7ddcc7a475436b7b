package queueproxy

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// The own endpoints' handlers get a context that reads nothing of the
// fasthttp.RequestCtx (which the server reuses for the next request) and
// ends when the handler returns.
func TestOwnEndpointsContextIsDetachedFromTheRequestCtx(t *testing.T) {
	type key struct{}
	got := make(chan context.Context, 1)
	h := fasthttpadaptor.NewFastHTTPHandler(detach(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Context()
	})))
	var req fasthttp.Request
	req.SetRequestURI("/kvasir/ready")
	var rc fasthttp.RequestCtx
	rc.Init(&req, nil, nil)
	rc.SetUserValue(key{}, "request value")
	h(&rc)
	ctx := <-got
	_, isFast := ctx.(*fasthttp.RequestCtx)
	assert.False(t, isFast)
	assert.Nil(t, ctx.Value(key{}), "a value of the RequestCtx reached the handler's context")
	<-ctx.Done() // ended with the handler
}
