package activator

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// TagHeader selects a tagged revision.
const TagHeader = "X-Kvasir-Tag"

// RevisionHeader names, on a response, the revision that served it.
const RevisionHeader = "X-Kvasir-Revision"

// Paths of the OpenAI API the activator serves.
const (
	PathChat        = "/v1/chat/completions"
	PathCompletions = "/v1/completions"
	PathEmbeddings  = "/v1/embeddings"
	PathModels      = "/v1/models"
)

// failure is an error answered before any byte of a response.
type failure struct {
	status     int
	err        openai.Error
	retryAfter time.Duration
	// reply, when set, is the replica's own answer (status above), passed
	// through to HTTP clients as it came; err is its OpenAI error.
	reply *reply
	// header holds headers to answer with besides the error's own (the
	// x-ratelimit-* and retry-after-ms of a rate limit denial).
	header http.Header
	// spent is what of the request's reserved cost an engine may have
	// used before it failed (ratelimit.go settles it).
	spent spentKind
}

// routed is a request resolved to a service and revision, with the body to
// send and the scheduler's view of it (release with done).
type routed struct {
	svc  *service
	rev  *revisionRoute
	body []byte
	req  *scheduler.Request
	// tenant is who sent the request (nil: the API is open).
	tenant *tenant
	// name and tag are the model as the tenant called it: a service's model
	// or a LoRA adapter, without a traffic tag; and the tag ("" for none),
	// from the model name or X-Kvasir-Tag. Tenants' limit rules name them.
	name, tag string
	// adm is the request's rate limit reservation (ratelimit.go); nil when
	// the request is not limited.
	adm *admission
}

func (rt routed) done() { rt.req.Release() }

// apiOf names the API of an inference path.
func apiOf(path string) string {
	switch path {
	case PathChat:
		return scheduler.APIChat
	case PathCompletions:
		return scheduler.APICompletions
	}
	return scheduler.APIEmbeddings
}

// route resolves a parsed request body on path to a revision, for tenant
// tn (nil: the API is open), which must be allowed the model (403 before
// any 404, so that a tenant learns nothing of the models it may not call).
// A tenant's request refused here is counted (its answer is final, over
// HTTP or WebSocket), with no model.
func (a *Activator) route(obj openai.Object, path, tagHeader string, tn *tenant) (routed, *failure) {
	rt, f := a.resolve(obj, path, tagHeader, tn)
	if f != nil {
		a.metrics.tenant.request(tn, "", f.status)
	}
	return rt, f
}

// resolve is route without counting.
func (a *Activator) resolve(obj openai.Object, path, tagHeader string, tn *tenant) (routed, *failure) {
	if f := platformFieldFailure(obj); f != nil {
		return routed{}, f
	}
	model, ok := obj.String("model")
	if !ok || model == "" {
		return routed{}, &failure{status: http.StatusBadRequest, err: openai.ErrMissingModel}
	}
	t := a.routes.Load()
	body := obj.Raw()
	name, tag := model, tagHeader
	s, adapter, found := t.lookup(model)
	if !found {
		var atTag string
		name, atTag = traffic.SplitModelTag(model)
		if atTag != "" {
			tag = atTag
		}
		if !tn.permits(name, tag) {
			return routed{}, notAllowed(model)
		}
		if s, adapter, found = t.lookup(name); !found || atTag == "" {
			return routed{}, &failure{status: http.StatusNotFound, err: openai.ModelNotFound(model)}
		}
		body = obj.Set("model", strconv.AppendQuote(nil, name))
	} else if !tn.permits(name, tag) {
		return routed{}, notAllowed(model)
	}
	var revName string
	if tag != "" {
		rn, ok := s.split.Tagged(tag)
		if !ok {
			return routed{}, &failure{status: http.StatusNotFound, err: openai.Err(openai.TypeNotFound, "tag_not_found",
				"model `"+name+"` has no traffic tag `"+tag+"`")}
		}
		revName = rn
	} else {
		revName = s.split.Pick(rand.IntN(100))
	}
	return routed{svc: s, rev: s.revisions[revName], body: body, req: &scheduler.Request{Body: obj, API: apiOf(path), Adapter: adapter},
		tenant: tn, name: name, tag: tag}, nil
}

func (a *Activator) observe(rt routed, code int, start time.Time) {
	if code == http.StatusOK {
		rt.rev.ok.Inc()
	} else {
		a.metrics.requests.WithLabelValues(rt.svc.cfg.Namespace, rt.svc.cfg.Name, rt.rev.cfg.Name, strconv.Itoa(code)).Inc()
	}
	rt.rev.duration.Observe(time.Since(start).Seconds())
	a.metrics.tenant.request(rt.tenant, rt.modelLabel(), code)
}
