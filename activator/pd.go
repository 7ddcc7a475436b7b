package activator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
	"github.com/kvasir-serving/kvasir/pkg/upstream"
)

// SkipRemotePrefill is the share of a prompt's blocks a decode pod must hold
// already for the activator to let it prefill the rest itself rather than
// have a prefill pod compute the whole prompt and transfer it.
const SkipRemotePrefill = 0.8

// maxPrefillReply bounds a prefill pod's answer: a longer one is refused
// (the next prefill pod is tried).
const maxPrefillReply = 4 << 20

// PD outcomes, the "prefill" label of kvasir_activator_pd_requests_total.
const (
	pdRemote   = "remote"   // a prefill pod computed the prompt; its KV went to the decode pod
	pdLocal    = "local"    // the decode pod held most of the prompt and prefilled the rest
	pdFallback = "fallback" // no prefill pod could do it; the decode pod prefilled
)

// prefillFor runs the prefill half of a disaggregated request for the
// decode pod dp, already chosen, and returns the body to send to dp: the
// client's body with the prefill pod's kv_transfer_params, or the client's
// body unchanged when dp should prefill itself. A failing prefill pod is
// retried on the next one; when none can, the decode pod prefills (the
// client still gets one answer).
//
// hdr is what of the client's headers goes with the prefill request (its
// key headers never do when the activator authenticated it); watch and ctx
// are the client's, as for send: a client that leaves cancels the prefill.
func (a *Activator) prefillFor(ctx context.Context, rt routed, dp *scheduler.Pod, path string, hdr *fwdHeader, timeout time.Duration, watch upstream.Watcher) []byte {
	if rt.req.API != scheduler.APIChat && rt.req.API != scheduler.APICompletions {
		return rt.body
	}
	if rt.rev.rev.matchFraction(rt.req, dp) >= SkipRemotePrefill {
		a.metrics.pd.WithLabelValues(rt.svc.cfg.Namespace, rt.svc.cfg.Name, rt.rev.cfg.Name, pdLocal).Inc()
		return rt.body
	}
	pre := rt.rev.prefill
	obj, err := openai.Parse(rt.body)
	if err != nil { // the body parsed before: cannot happen
		a.log.Error("building the prefill request", slog.Any("error", err))
		return rt.body
	}
	prefillBody := prefillRequest(obj)
	var tried map[string]bool
	for attempt := 0; attempt < a.cfg.MaxAttempts; attempt++ {
		pp := pre.tryAcquire(ctx, rt.req, tried)
		if pp == nil {
			if attempt == 0 && a.onDemand != nil {
				a.onDemand(pre.key) // none ready: the decode pod prefills; ask for prefill capacity
			}
			break
		}
		params, o, err := a.prefill(ctx, pp, path, hdr, prefillBody, timeout, watch)
		if ctx.Err() != nil {
			o = outcomeNone
		}
		a.release(pre, pp, o, "")
		if err == nil {
			a.metrics.pd.WithLabelValues(rt.svc.cfg.Namespace, rt.svc.cfg.Name, rt.rev.cfg.Name, pdRemote).Inc()
			return obj.Set("kv_transfer_params", params)
		}
		if ctx.Err() != nil {
			return rt.body // the client left; the decode attempt fails on ctx
		}
		a.log.Warn("prefill pod failed; trying the next", slog.String("revision", rt.rev.cfg.Name),
			slog.String("pod", pp.Name), slog.Int("attempt", attempt+1), slog.Any("error", err))
		if tried == nil {
			tried = map[string]bool{}
		}
		tried[pp.Name] = true
	}
	a.metrics.pd.WithLabelValues(rt.svc.cfg.Namespace, rt.svc.cfg.Name, rt.rev.cfg.Name, pdFallback).Inc()
	return rt.body
}

// prefill sends the prefill request to pod pp and returns the
// kv_transfer_params of its answer, and what the exchange showed of pp's
// health (outlier detection). The exchange ends within timeout; an answer
// over maxPrefillReply is refused.
func (a *Activator) prefill(ctx context.Context, pp *scheduler.Pod, path string, hdr *fwdHeader, body []byte, timeout time.Duration, watch upstream.Watcher) (json.RawMessage, outcome, error) {
	u, err := a.send(ctx, pp.Address, path, hdr, body, time.Now().Add(timeout), watch)
	if err != nil {
		return nil, outcomeFailure, err
	}
	data, err := u.readAll(maxPrefillReply)
	status := u.resp.StatusCode()
	u.finish(true) // reused when read to its end
	tooLarge := errors.Is(err, errTooLarge)
	if err != nil && !tooLarge {
		return nil, outcomeFailure, fmt.Errorf("reading the prefill answer: %w", err)
	}
	if status != http.StatusOK {
		o := outcomeSuccess // it answered
		if isGatewayFailure(status) {
			o = outcomeFailure
		}
		return nil, o, fmt.Errorf("prefill answered %d: %s", status, truncate(data, 200))
	}
	if tooLarge {
		return nil, outcomeSuccess, fmt.Errorf("prefill answer over %d bytes: %w", maxPrefillReply, err)
	}
	obj, err := openai.Parse(data)
	if err != nil {
		return nil, outcomeSuccess, fmt.Errorf("prefill answer: %w", err)
	}
	params, ok := obj.Get("kv_transfer_params")
	if !ok || len(params) == 0 || params[0] != '{' {
		return nil, outcomeSuccess, errors.New("prefill answer has no kv_transfer_params object (is the engine a prefill engine with a KV connector?)")
	}
	return params, outcomeSuccess, nil
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "..."
}

// prefillRequest turns a client body, parsed, into the prefill half: one
// token, no streaming, and the KV kept for a remote decode.
func prefillRequest(obj openai.Object) []byte {
	if _, ok := obj.Get("max_completion_tokens"); ok {
		obj = obj.With("max_completion_tokens", []byte("1"))
	}
	for _, kv := range [][2]string{{"max_tokens", "1"}, {"stream", "false"}, {"kv_transfer_params", `{"do_remote_decode":true}`}} {
		obj = obj.With(kv[0], []byte(kv[1]))
	}
	return obj.Delete("stream_options")
}
