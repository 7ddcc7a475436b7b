package reconciler

import (
	"testing"

	"github.com/stretchr/testify/assert"
	corev1 "k8s.io/api/core/v1"
	"knative.dev/pkg/apis"
)

func TestReadyEvent(t *testing.T) {
	ready := &apis.Condition{Type: apis.ConditionReady, Status: corev1.ConditionTrue}
	failed := &apis.Condition{Type: apis.ConditionReady, Status: corev1.ConditionFalse, Reason: "ReconcileFailed", Message: "no quota"}
	for name, tc := range map[string]struct {
		was, now           *apis.Condition
		kind, reason, note string
		ok                 bool
	}{
		"first ready":   {nil, ready, corev1.EventTypeNormal, "ReadyTrue", "Ready is True", true},
		"failed":        {ready, failed, corev1.EventTypeWarning, "ReadyFalse", "Ready is False: ReconcileFailed no quota", true},
		"unchanged":     {failed, failed, "", "", "", false},
		"no condition":  {ready, nil, "", "", "", false},
		"back to ready": {failed, ready, corev1.EventTypeNormal, "ReadyTrue", "Ready is True", true},
	} {
		t.Run(name, func(t *testing.T) {
			kind, reason, note, ok := ReadyEvent(tc.was, tc.now)
			assert.Equal(t, []any{tc.kind, tc.reason, tc.note, tc.ok}, []any{kind, reason, note, ok})
		})
	}
}
