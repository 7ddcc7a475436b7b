package traffic

import (
	"fmt"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

// Resolve turns spec.traffic into concrete targets: latestRevision targets
// name latestReady, revisionName targets must be known. No spec means 100%
// to latestReady. Errors name the field (spec.traffic[i]...). Local mode and
// the ModelService reconciler both use it, so a file and a cluster split the
// same way.
func Resolve(spec []v1alpha1.TrafficTarget, latestReady string, known func(revision string) bool) ([]Target, error) {
	if len(spec) == 0 {
		if latestReady == "" {
			return nil, fmt.Errorf("spec.traffic: no ready revision to send traffic to")
		}
		return []Target{{Revision: latestReady, Percent: 100}}, nil
	}
	out := make([]Target, 0, len(spec))
	for i, t := range spec {
		latest := t.LatestRevision != nil && *t.LatestRevision
		rev := t.RevisionName
		switch {
		case latest && rev != "":
			return nil, fmt.Errorf("spec.traffic[%d]: set only one of revisionName and latestRevision", i)
		case latest:
			if latestReady == "" {
				return nil, fmt.Errorf("spec.traffic[%d].latestRevision: no revision is ready yet", i)
			}
			rev = latestReady
		case rev == "":
			return nil, fmt.Errorf("spec.traffic[%d]: one of revisionName and latestRevision is required", i)
		case !known(rev):
			return nil, fmt.Errorf("spec.traffic[%d].revisionName: unknown revision %q", i, rev)
		}
		pct := 0
		if t.Percent != nil {
			pct = int(*t.Percent)
		}
		out = append(out, Target{Revision: rev, Percent: pct, Tag: t.Tag})
	}
	return out, nil
}

// Referenced returns the revisions targets name (with any percent or a tag).
func Referenced(targets []Target) map[string]bool {
	out := make(map[string]bool, len(targets))
	for _, t := range targets {
		out[t.Revision] = true
	}
	return out
}
