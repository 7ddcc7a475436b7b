package activator

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// AnyOrigin in Config.AllowedOrigins admits WebSocket upgrades from every
// origin.
const AnyOrigin = "*"

// originPolicy decides which browser origins may open a WebSocket: a page
// of any other origin could otherwise drive the API from a user's browser
// (with the user's network access) and read the answers, which the
// same-origin policy prevents for plain HTTP requests.
type originPolicy struct {
	any     bool
	allowed map[string]bool // canonical origins (see canonicalOrigin)
}

// newOriginPolicy builds the policy of a validated allow-list.
func newOriginPolicy(list []string) originPolicy {
	p := originPolicy{allowed: make(map[string]bool, len(list))}
	for _, o := range list {
		if o == AnyOrigin {
			p.any = true
			continue
		}
		if u, err := url.Parse(o); err == nil {
			p.allowed[canonicalOrigin(u)] = true
		}
	}
	return p
}

// allows reports whether the upgrade request r may proceed: it carries no
// Origin (a program, not a browser), or its Origin is the request's own
// host (same origin, as gorilla/websocket's default check), or an origin of
// the allow-list. Scheme and host compare case-insensitively and a port
// that is the scheme's default is ignored (RFC 6454).
func (p originPolicy) allows(r *http.Request) bool {
	origins := r.Header["Origin"]
	if len(origins) == 0 {
		return true
	}
	if len(origins) > 1 { // a browser sends one; two is not a browser we can reason about
		return false
	}
	if p.any {
		return true
	}
	u, err := url.Parse(origins[0])
	if err != nil || u.Host == "" { // includes the opaque origin "null"
		return false
	}
	if strings.EqualFold(u.Host, r.Host) || strings.EqualFold(hostWithoutDefaultPort(u), r.Host) {
		return true
	}
	return p.allowed[canonicalOrigin(u)]
}

// canonicalOrigin serializes an origin's scheme, host and port, lower case,
// without a port that is the scheme's default.
func canonicalOrigin(u *url.URL) string {
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(hostWithoutDefaultPort(u))
}

// hostWithoutDefaultPort returns u's host[:port], dropping :80 for http and
// ws and :443 for https and wss.
func hostWithoutDefaultPort(u *url.URL) string {
	port := u.Port()
	switch {
	case port == "80" && (strings.EqualFold(u.Scheme, "http") || strings.EqualFold(u.Scheme, "ws")),
		port == "443" && (strings.EqualFold(u.Scheme, "https") || strings.EqualFold(u.Scheme, "wss")):
		return strings.TrimSuffix(u.Host, ":"+port)
	}
	return u.Host
}

// validateOrigin checks one entry of Config.AllowedOrigins: "*" or a full
// origin (scheme and host, optional port, nothing else).
func validateOrigin(o string) error {
	if o == AnyOrigin {
		return nil
	}
	u, err := url.Parse(o)
	if err != nil {
		return fmt.Errorf("%q: %w", o, err)
	}
	switch {
	case u.Scheme == "" || u.Host == "" || u.Opaque != "":
		return fmt.Errorf("%q: want a full origin such as https://app.example.com (scheme and host), or %q for any", o, AnyOrigin)
	case u.User != nil:
		return fmt.Errorf("%q: an origin has no user information", o)
	case u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return fmt.Errorf("%q: an origin has no path, query or fragment (a browser sends scheme://host[:port])", o)
	case strings.Contains(u.Host, "*"):
		return fmt.Errorf("%q: wildcard hosts are not supported; list each origin, or %q alone for any", o, AnyOrigin)
	}
	return nil
}

// originNotAllowed is the message of the 403 for a WebSocket upgrade from
// another origin.
const originNotAllowed = "WebSocket upgrades are accepted from the API's own origin and the origins of --allowed-origins only"
