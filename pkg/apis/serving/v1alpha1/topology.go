package v1alpha1

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"knative.dev/pkg/apis"
)

// MaxTopologyKeyLength bounds topologyKey: a label key is a DNS subdomain
// prefix of at most 253 characters, "/" and a name of at most 63. The CRDs
// carry the same bound and the key's pattern.
const MaxTopologyKeyLength = 253 + 1 + 63

// RoleTopologyKey returns the topology key of a role's serving groups
// ("prefill" or "decode"; any role of a unified template): the role's own
// when it sets one, else the template's; "" when neither does. Unlike
// groupSize, a role's own parallelism does not drop the template's key:
// where groups are placed does not depend on how they are split.
func (t *RevisionTemplate) RoleTopologyKey(role string) string {
	if r := t.roleSpec(role); r != nil && r.TopologyKey != "" {
		return r.TopologyKey
	}
	return t.TopologyKey
}

// validateTopology checks the template's and the roles' topology keys
// (paths topologyKey, roles.<role>.topologyKey).
func (t *RevisionTemplate) validateTopology() *apis.FieldError {
	errs := validateTopologyKey(t.TopologyKey, "topologyKey")
	if t.Roles != nil {
		for _, name := range []string{"prefill", "decode"} {
			if r := t.roleSpec(name); r != nil {
				errs = errs.Also(validateTopologyKey(r.TopologyKey, "topologyKey").ViaField("roles", name))
			}
		}
	}
	return errs
}

// validateTopologyKey checks that a set key is a label key (a Kubernetes
// qualified name: an optional DNS subdomain prefix and "/", then a name of
// at most 63 characters), which LeaderWorkerSet puts in its pods' affinity
// and node selector. A refused key is quoted at most 64 bytes long.
func validateTopologyKey(key, field string) *apis.FieldError {
	if key == "" {
		return nil
	}
	if len(key) > MaxTopologyKeyLength {
		return apis.ErrInvalidValue(clip(key, 64), field,
			fmt.Sprintf("must be a label key of at most %d characters, has %d", MaxTopologyKeyLength, len(key)))
	}
	if msgs := validation.IsQualifiedName(key); len(msgs) > 0 {
		return apis.ErrInvalidValue(clip(key, 64), field, "must be a label key: "+strings.Join(msgs, "; "))
	}
	return nil
}

// clip shortens s to at most n bytes (on a rune boundary), marking a cut
// with "…".
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && cut < len(s) && !isRuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// isRuneStart reports whether b begins a UTF-8 encoded rune.
func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }
