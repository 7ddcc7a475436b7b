package autoscaling

import (
	"context"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metricsv1beta1 "k8s.io/metrics/pkg/client/clientset/versioned/typed/metrics/v1beta1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
)

// DefaultResourceMetricsInterval is how often the autoscaler reads the
// resource metrics API: metrics-server's own resolution.
const DefaultResourceMetricsInterval = 15 * time.Second

// resourceUse is what a revision role's pods use, summed.
type resourceUse struct{ CPU, MemoryGiB float64 }

// usage follows the revision pods' CPU and memory use through the resource
// metrics API (metrics.k8s.io), for the cpu and memoryGiB targets.
type usage struct {
	client   metricsv1beta1.PodMetricsesGetter
	interval time.Duration
	log      *slog.Logger

	tried, sampled time.Time
	byKey          map[fleet.Key]resourceUse
	lastErr        string
}

// refresh reads every revision pod's metrics, at most once an interval. A
// failure (no metrics-server, no permission) is logged when it changes and
// leaves the last sample, which goes stale.
func (u *usage) refresh(ctx context.Context, now time.Time) {
	if u.client == nil || now.Sub(u.tried) < u.interval {
		return
	}
	u.tried = now
	list, err := u.client.PodMetricses(metav1.NamespaceAll).List(ctx, metav1.ListOptions{LabelSelector: v1alpha1.LabelRevision})
	if err != nil {
		if msg := err.Error(); msg != u.lastErr {
			u.lastErr = msg
			u.log.Warn("autoscaler cannot read pod metrics (metrics.k8s.io); the cpu and memoryGiB targets have no data",
				slog.Any("error", err))
		}
		return
	}
	if u.lastErr != "" {
		u.log.Info("autoscaler reads pod metrics again")
		u.lastErr = ""
	}
	byKey := map[fleet.Key]resourceUse{}
	for _, pm := range list.Items {
		l := pm.Labels
		if l[resources.LabelGroupWorker] != "" {
			continue // a serving group's worker: the group is its leader's replica
		}
		k := fleet.Key{Namespace: pm.Namespace, Service: l[v1alpha1.LabelService], Revision: l[v1alpha1.LabelRevision],
			Role: fleet.RoleOfLabel(l[v1alpha1.LabelRole])}
		use := byKey[k]
		for _, c := range pm.Containers {
			use.CPU += c.Usage.Cpu().AsApproximateFloat64()
			use.MemoryGiB += c.Usage.Memory().AsApproximateFloat64() / (1 << 30)
		}
		byKey[k] = use
	}
	u.byKey, u.sampled = byKey, now
}

// of is a revision role's use, zero when the last sample is older than
// three intervals.
func (u *usage) of(k fleet.Key, now time.Time) resourceUse {
	if now.Sub(u.sampled) > 3*u.interval {
		return resourceUse{}
	}
	return u.byKey[k]
}
