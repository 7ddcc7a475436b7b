package fleet

import (
	"context"
	"fmt"
)

// Roles of a revision's replica sets: the one vocabulary of the project.
// A revision without spec.roles runs one unified replica set; a
// disaggregated one runs a prefill and a decode set.
const (
	RoleUnified = ""
	RolePrefill = "prefill"
	RoleDecode  = "decode"
)

// RoleLabelUnified is the unified role's value in the kvasir.dev/role
// label and in metrics' role label.
const RoleLabelUnified = "unified"

// RoleLabel is a role's value in the kvasir.dev/role label and in metrics.
func RoleLabel(role string) string {
	if role == RoleUnified {
		return RoleLabelUnified
	}
	return role
}

// RoleOfLabel is RoleLabel's inverse.
func RoleOfLabel(label string) string {
	if label == RoleLabelUnified {
		return RoleUnified
	}
	return label
}

// Roles are the roles of a revision, disaggregated or not.
func Roles(disaggregated bool) []string {
	if disaggregated {
		return []string{RolePrefill, RoleDecode}
	}
	return []string{RoleUnified}
}

// Key names one replica set: a revision's role.
type Key struct {
	Namespace string
	Service   string
	Revision  string
	Role      string
}

// RoleLabel is the key's role as labels and metrics name it.
func (k Key) RoleLabel() string { return RoleLabel(k.Role) }

func (k Key) String() string {
	s := k.Namespace + "/" + k.Revision
	if k.Role != "" {
		s += "/" + k.Role
	}
	return s
}

// Endpoint is one ready replica as the data plane reaches it.
type Endpoint struct {
	// Name identifies the replica (pod name, or local replica name).
	Name string
	// Address is host:port of the replica's queue-proxy.
	Address string
	// Variant is the accelerator variant the replica runs on, if any.
	Variant string
}

// Scaler sets the desired replica count of a replica set.
type Scaler interface {
	Scale(ctx context.Context, key Key, replicas int) error
}

// VariantScaler sets the replicas of a replica set per accelerator variant
// (the variant's name; "" for a set without variants). Variants left out go
// to zero.
type VariantScaler interface {
	ScaleVariants(ctx context.Context, key Key, counts map[string]int) error
}

// Watcher reports the ready endpoints of a replica set. fn is called with the
// full current set at once and after every change, never concurrently for
// one watch; stop ends the watch.
//
// What every implementation guarantees:
//   - fn gets the whole set each time, first the set as it is when the watch
//     starts (possibly after Watch has returned), then after changes;
//   - never an older set after a newer one: sets that change faster than fn
//     returns may be skipped, the latest is delivered while the watch lasts;
//   - fn is not called under the implementation's locks, nor on the
//     goroutine of a Scale: it may call the runtime and take locks that
//     callers of the runtime hold;
//   - stop waits for a call of fn under way, and no call starts after it
//     returns; so stop must not be called from fn.
type Watcher interface {
	Watch(key Key, fn func(ready []Endpoint)) (stop func())
}

// Runtime is both.
type Runtime interface {
	Scaler
	Watcher
}

// ErrUnknown is returned for a key the runtime does not know.
type ErrUnknown struct{ Key Key }

func (e ErrUnknown) Error() string { return fmt.Sprintf("unknown replica set %s", e.Key) }
