package autoscaling

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"
	metricsv1beta1 "k8s.io/metrics/pkg/apis/metrics/v1beta1"
	metricsfake "k8s.io/metrics/pkg/client/clientset/versioned/fake"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

// Without metrics-server the cpu and memory targets have no data: said once
// in the log, not on every pass; once it answers, its sample counts, and a
// sample goes stale after three intervals.
func TestUsageWithoutAndWithMetricsServer(t *testing.T) {
	cs := metricsfake.NewSimpleClientset()
	down := true
	cs.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		if down {
			return true, nil, errors.New(`the server could not find the requested resource (get pods.metrics.k8s.io)`)
		}
		return true, &metricsv1beta1.PodMetricsList{Items: []metricsv1beta1.PodMetrics{{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default", Labels: map[string]string{
				v1alpha1.LabelService: "llama", v1alpha1.LabelRevision: "llama-00001", v1alpha1.LabelRole: "decode"}},
			Containers: []metricsv1beta1.ContainerMetrics{{Name: "engine", Usage: corev1.ResourceList{
				"cpu": resource.MustParse("1500m"), "memory": resource.MustParse("2Gi")}}},
		}}}, nil
	})
	var logs bytes.Buffer
	u := &usage{client: cs.MetricsV1beta1(), interval: time.Second, log: slog.New(slog.NewTextHandler(&logs, nil))}
	key := fleet.Key{Namespace: "default", Service: "llama", Revision: "llama-00001", Role: "decode"}
	t0 := time.Unix(1000, 0)
	for i := range 3 {
		u.refresh(context.Background(), t0.Add(time.Duration(i)*time.Second))
	}
	require.Equal(t, 1, strings.Count(logs.String(), "cannot read pod metrics"), logs.String())
	require.Equal(t, resourceUse{}, u.of(key, t0.Add(2*time.Second)))

	down = false
	u.refresh(context.Background(), t0.Add(3*time.Second))
	require.Equal(t, resourceUse{CPU: 1.5, MemoryGiB: 2}, u.of(key, t0.Add(3*time.Second)))
	require.Contains(t, logs.String(), "reads pod metrics again")
	require.Equal(t, resourceUse{}, u.of(key, t0.Add(7*time.Second)), "stale after three intervals")
}
