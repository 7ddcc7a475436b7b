package reconciler

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	"knative.dev/pkg/apis"
)

// ReadyEvent describes the change of a Ready condition from was to now as
// an event: its type (Warning when now is False), reason ("Ready" + status)
// and note ("Ready is True", or "Ready is False: Reason message"). ok is
// false when there is nothing to tell: no condition now, or the same status
// and reason as before.
func ReadyEvent(was, now *apis.Condition) (kind, reason, note string, ok bool) {
	if now == nil || (was != nil && was.Status == now.Status && was.Reason == now.Reason) {
		return "", "", "", false
	}
	kind = corev1.EventTypeNormal
	if now.IsFalse() {
		kind = corev1.EventTypeWarning
	}
	note = "Ready is " + string(now.Status)
	if why := strings.TrimSpace(now.Reason + " " + now.Message); why != "" {
		note += ": " + why
	}
	return kind, "Ready" + string(now.Status), note, true
}
