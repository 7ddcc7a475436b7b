package activator

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/ratelimit"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// Authentication. With no tenant configured the API is open, as it always
// was. With tenants, every request presents a key (Authorization: Bearer
// KEY, or api-key: KEY as Azure's clients send it); the key is hashed and
// its SHA-256 looked up among the tenants' digests. Comparing digests, never
// the keys themselves, makes the lookup's timing independent of the
// secret's bytes: an attacker learns nothing from how long a guess takes
// that would help forge a key (the digest of a guess is unrelated to the
// digest of the key). Keys are never logged, never put in an error or a
// metric label, and never forwarded to engines.

// APIKeyHeader is the Azure OpenAI style key header, accepted beside
// Authorization: Bearer.
const APIKeyHeader = "Api-Key"

// TenantConfig is what the activator needs to know of a Tenant: who it is,
// the digests of its keys, its class and share, and the models it may
// call.
type TenantConfig struct {
	Namespace string
	Name      string
	// Keys are the SHA-256 digests of the tenant's API keys.
	Keys [][32]byte
	// Priority and Weight are the tenant's class and share under contention.
	Priority v1alpha1.TenantPriority
	Weight   int32
	// Models are the model names the tenant may call: "*" for all, a name
	// for that model and its tags, name@tag for that tag only. Empty: none
	// (TenantConfigOf gives an absent spec.models the API's default, "*").
	Models []string
	// Limits are the tenant's rate limit rules (spec.limits), at most one
	// per model. None: the tenant is not limited.
	Limits []LimitRule
}

// LimitRule is one rate limit rule of a tenant: the limits of its traffic
// to one model, or to all its models together.
type LimitRule struct {
	// Model is "*" (the tenant's traffic to every model it calls, counted
	// together), a model name as the tenant calls it (a service's model or
	// a LoRA adapter: every traffic tag of it, counted together), or
	// name@tag (that tag only).
	Model string
	// Limits are the rule's bounds; zero ones do not limit.
	Limits ratelimit.Limits
}

// tenant is a configured tenant and its model grants, resolved.
type tenant struct {
	cfg    TenantConfig
	all    bool
	models map[string]bool // names granted with every tag
	tagged map[string]bool // name@tag granted
	// limits are the rules by their Model; nil when there are none.
	limits map[string]ratelimit.Limits
}

// limitFor returns the limit rule of a request to model name (as called,
// without a tag) with tag ("" for none): the rule of name@tag, else of
// name, else "*". ok is false when none applies (or tn is nil: the API is
// open).
func (tn *tenant) limitFor(name, tag string) (model string, l ratelimit.Limits, ok bool) {
	if tn == nil || tn.limits == nil {
		return "", ratelimit.Limits{}, false
	}
	if tag != "" {
		if l, ok := tn.limits[name+"@"+tag]; ok {
			return name + "@" + tag, l, true
		}
	}
	if l, ok := tn.limits[name]; ok {
		return name, l, true
	}
	l, ok = tn.limits[v1alpha1.AllModels]
	return v1alpha1.AllModels, l, ok
}

// resolveLimits checks a tenant's limit rules and indexes them by model;
// errors name the field (spec.limits[i]...).
func resolveLimits(rules []LimitRule) (map[string]ratelimit.Limits, error) {
	if len(rules) == 0 {
		return nil, nil
	}
	out := make(map[string]ratelimit.Limits, len(rules))
	first := map[string]int{}
	for i, r := range rules {
		field := fmt.Sprintf("spec.limits[%d]", i)
		if name, tag := traffic.SplitModelTag(r.Model); name == "" || (tag == "" && strings.Contains(r.Model, "@")) {
			return nil, fmt.Errorf("%s.model: %q is not \"*\", a model name or name@tag", field, r.Model)
		}
		if prev, dup := first[r.Model]; dup {
			return nil, fmt.Errorf("%s.model: %q already has a limit (spec.limits[%d])", field, r.Model, prev)
		}
		for _, b := range []struct {
			name string
			v    int64
		}{
			{"requestsPerMinute", r.Limits.RequestsPerMinute}, {"tokensPerMinute", r.Limits.TokensPerMinute},
			{"inputTokensPerMinute", r.Limits.InputTokensPerMinute}, {"outputTokensPerMinute", r.Limits.OutputTokensPerMinute},
			{"maxConcurrentRequests", r.Limits.MaxConcurrentRequests},
		} {
			if b.v < 0 {
				return nil, fmt.Errorf("%s.%s: must be >= 1, got %d", field, b.name, b.v)
			}
		}
		if r.Limits.IsZero() {
			return nil, fmt.Errorf("%s: sets no limit", field)
		}
		first[r.Model] = i
		out[r.Model] = r.Limits
	}
	return out, nil
}

// tenantTable is an immutable snapshot of the tenants, swapped atomically:
// the tenant of each key digest.
type tenantTable struct {
	byDigest map[[32]byte]*tenant
}

func (t *tenantTable) open() bool { return t == nil || len(t.byDigest) == 0 }

// newTenantTable resolves and checks tenant configurations; errors name
// the tenant and the key's index, never the key.
func newTenantTable(cfgs []TenantConfig) (*tenantTable, error) {
	t := &tenantTable{byDigest: map[[32]byte]*tenant{}}
	names := map[string]bool{}
	for _, c := range cfgs {
		id := c.Namespace + "/" + c.Name
		if c.Name == "" {
			return nil, errors.New("tenant: a name is required")
		}
		if names[id] {
			return nil, fmt.Errorf("tenant %q: defined twice", id)
		}
		names[id] = true
		if len(c.Keys) == 0 {
			return nil, fmt.Errorf("tenant %q: no API key", id)
		}
		limits, err := resolveLimits(c.Limits)
		if err != nil {
			return nil, fmt.Errorf("tenant %q: %w", id, err)
		}
		tn := &tenant{cfg: c, models: map[string]bool{}, tagged: map[string]bool{}, limits: limits}
		for _, m := range c.Models {
			switch name, tag := traffic.SplitModelTag(m); {
			case m == v1alpha1.AllModels:
				tn.all = true
			case tag != "":
				tn.tagged[name+"@"+tag] = true
			default:
				tn.models[m] = true
			}
		}
		for i, d := range c.Keys {
			if other, dup := t.byDigest[d]; dup {
				return nil, fmt.Errorf("tenant %q: API key %d is also a key of tenant %q", id,
					i, other.cfg.Namespace+"/"+other.cfg.Name)
			}
			t.byDigest[d] = tn
		}
	}
	return t, nil
}

// ValidateTenants checks tenant configurations as SetTenants does, without
// changing anything.
func ValidateTenants(cfgs []TenantConfig) error {
	_, err := newTenantTable(cfgs)
	return err
}

// SetTenants replaces the tenants. None: the API is open to anyone who can
// reach it. On error nothing changes.
func (a *Activator) SetTenants(cfgs []TenantConfig) error {
	t, err := newTenantTable(cfgs)
	if err != nil {
		return err
	}
	a.tenants.Store(t)
	return nil
}

// lookup returns the tenant of a key.
func (t *tenantTable) lookup(key string) (*tenant, bool) {
	tn, ok := t.byDigest[sha256.Sum256([]byte(key))]
	return tn, ok
}

// permits reports whether the tenant may call model name (a service's
// model or a LoRA adapter) with tag ("" for none); nil (no tenants) may
// call everything.
func (tn *tenant) permits(name, tag string) bool {
	if tn == nil || tn.all || tn.models[name] {
		return true
	}
	return tag != "" && tn.tagged[name+"@"+tag]
}

// permitsID is permits for a model id as /v1/models names it: a name, or
// name@tag.
func (tn *tenant) permitsID(id string) bool {
	if tn.permits(id, "") {
		return true
	}
	name, tag := traffic.SplitModelTag(id)
	return tag != "" && tn.permits(name, tag)
}

// notAllowed is the 403 of a model the tenant may not call.
func notAllowed(model string) *failure {
	return &failure{status: http.StatusForbidden, err: openai.Err(openai.TypeInvalidRequest, "model_not_allowed",
		"this API key may not call model `"+model+"`")}
}

// Errors of authentication. Their messages never hold a key.
var (
	errMissingKey = openai.Err(openai.TypeInvalidRequest, "invalid_api_key",
		"no API key: send it as Authorization: Bearer KEY (or api-key: KEY)")
	errInvalidKey = openai.Err(openai.TypeInvalidRequest, "invalid_api_key", "invalid API key")
)

type tenantKey struct{}

// TenantFrom returns the tenant a request authenticated as; ok is false
// when the API is open (no tenants configured).
func TenantFrom(ctx context.Context) (cfg *TenantConfig, ok bool) {
	tn, ok := ctx.Value(tenantKey{}).(*tenant)
	if !ok {
		return nil, false
	}
	return &tn.cfg, true
}

func tenantOf(ctx context.Context) *tenant {
	tn, _ := ctx.Value(tenantKey{}).(*tenant)
	return tn
}

// presentedKey returns the key a request presents in its Authorization and
// api-key headers' values. bad is the reason
// (authMalformed, authConflicting) when the headers are malformed: several
// values of one, a scheme other than Bearer, an empty key, or both headers
// with different keys; "" otherwise. An empty key with bad "" means none
// was presented.
func presentedKey(auth, api []string) (key, bad string) {
	if len(auth) > 1 || len(api) > 1 {
		return "", authMalformed
	}
	var bearer string
	if len(auth) == 1 {
		scheme, cred, _ := strings.Cut(strings.TrimSpace(auth[0]), " ")
		cred = strings.TrimSpace(cred)
		if !strings.EqualFold(scheme, "Bearer") || cred == "" {
			return "", authMalformed
		}
		bearer = cred
	}
	if len(api) == 1 {
		k := strings.TrimSpace(api[0])
		if k == "" {
			return "", authMalformed
		}
		if bearer != "" {
			a, b := sha256.Sum256([]byte(bearer)), sha256.Sum256([]byte(k))
			if subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
				return "", authConflicting
			}
		}
		return k, ""
	}
	return bearer, ""
}
