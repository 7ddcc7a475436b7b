package traffic

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

func pct(n int64) *int64 { return &n }
func yes() *bool         { b := true; return &b }

func TestResolve(t *testing.T) {
	known := func(r string) bool { return r == "m-00001" || r == "m-00002" }
	got, err := Resolve(nil, "m-00002", known)
	require.NoError(t, err)
	require.Equal(t, []Target{{Revision: "m-00002", Percent: 100}}, got)

	got, err = Resolve([]v1alpha1.TrafficTarget{
		{RevisionName: "m-00001", Percent: pct(90)},
		{LatestRevision: yes(), Percent: pct(10), Tag: "canary"},
	}, "m-00002", known)
	require.NoError(t, err)
	require.Equal(t, []Target{{Revision: "m-00001", Percent: 90}, {Revision: "m-00002", Percent: 10, Tag: "canary"}}, got)
	require.Equal(t, map[string]bool{"m-00001": true, "m-00002": true}, Referenced(got))

	for name, tc := range map[string]struct {
		spec []v1alpha1.TrafficTarget
		want string
	}{
		"unknown":  {[]v1alpha1.TrafficTarget{{RevisionName: "m-00009", Percent: pct(100)}}, `spec.traffic[0].revisionName: unknown revision "m-00009"`},
		"both":     {[]v1alpha1.TrafficTarget{{RevisionName: "m-00001", LatestRevision: yes(), Percent: pct(100)}}, "spec.traffic[0]: set only one"},
		"neither":  {[]v1alpha1.TrafficTarget{{Percent: pct(100)}}, "spec.traffic[0]: one of revisionName and latestRevision is required"},
		"no ready": {[]v1alpha1.TrafficTarget{{LatestRevision: yes(), Percent: pct(100)}}, "spec.traffic[0].latestRevision: no revision is ready yet"},
	} {
		t.Run(name, func(t *testing.T) {
			latest := "m-00002"
			if name == "no ready" {
				latest = ""
			}
			_, err := Resolve(tc.spec, latest, known)
			require.ErrorContains(t, err, tc.want)
		})
	}
}
