package local

import (
	"testing"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// plannedService is a service's plan as names: the revision to start, those
// kept and retired, and the activators' view of its revisions and traffic.
type plannedService struct {
	start     string
	keep      []string
	retire    []string
	revisions []string // in the activators' table
	traffic   []traffic.Target
}

// llamaService is a defaulted ModelService "llama" served by engine image
// image (the template), with spec.traffic t and LoRA adapters.
func llamaService(image string, t []v1alpha1.TrafficTarget, adapters ...string) *v1alpha1.ModelService {
	ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "llama"}}
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim, Image: image}
	ms.Spec.Traffic, ms.Spec.LoRAAdapters = t, adapters
	ms.SetDefaults()
	return ms
}

// runningLlama is the state of "llama" after its revisions were made from the
// templates images, each ready or not, with LoRA adapters.
func runningLlama(images []string, ready []bool, adapters ...string) map[string]*serviceState {
	st := &serviceState{}
	for i, image := range images {
		ms := llamaService(image, nil, adapters...)
		st.revisions = append(st.revisions, &localRevision{name: v1alpha1.RevisionName("llama", i+1), gen: i + 1, ms: ms,
			template: templateKey(ms), ready: ready[i]})
		st.ms = ms
	}
	return map[string]*serviceState{"default/llama": st}
}

func pct64(n int64) *int64 { return &n }

func revisionNames(rs []*localRevision) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.name)
	}
	return out
}

// Reconciling plans, without changing the running services: a new service's
// first revision (ready from the start); a changed template's next one,
// which proves itself while the latest ready one keeps serving; retiring
// what traffic no longer names once a newer revision is ready; keeping what
// traffic names; a new revision for the first LoRA adapter but not for the
// next; and refusing traffic that names an unknown revision.
func TestPlanReconcile(t *testing.T) {
	r1, r2, r3 := "llama-00001", "llama-00002", "llama-00003"
	all := func(rev string) []traffic.Target { return []traffic.Target{{Revision: rev, Percent: 100}} }
	for _, tc := range []struct {
		name    string
		current map[string]*serviceState
		ms      *v1alpha1.ModelService
		want    plannedService
		wantErr string
	}{{
		name: "a new service",
		ms:   llamaService("v1", nil),
		want: plannedService{start: r1, keep: []string{r1}, revisions: []string{r1}, traffic: all(r1)},
	}, {
		name:    "nothing changed",
		current: runningLlama([]string{"v1"}, []bool{true}),
		ms:      llamaService("v1", nil),
		want:    plannedService{keep: []string{r1}, revisions: []string{r1}, traffic: all(r1)},
	}, {
		name:    "a changed template: the new revision proves itself",
		current: runningLlama([]string{"v1"}, []bool{true}),
		ms:      llamaService("v2", nil),
		want:    plannedService{start: r2, keep: []string{r1, r2}, revisions: []string{r1, r2}, traffic: all(r1)},
	}, {
		name:    "the new revision is ready: the old one retires",
		current: runningLlama([]string{"v1", "v2"}, []bool{true, true}),
		ms:      llamaService("v2", nil),
		want:    plannedService{keep: []string{r2}, retire: []string{r1}, revisions: []string{r2}, traffic: all(r2)},
	}, {
		name:    "a revision traffic names stays",
		current: runningLlama([]string{"v1", "v2"}, []bool{true, true}),
		ms: llamaService("v2", []v1alpha1.TrafficTarget{{RevisionName: r1, Percent: pct64(10)},
			{LatestRevision: ptrTo(true), Percent: pct64(90)}}),
		want: plannedService{keep: []string{r1, r2}, revisions: []string{r1, r2},
			traffic: []traffic.Target{{Revision: r1, Percent: 10}, {Revision: r2, Percent: 90}}},
	}, {
		name:    "a third template while the second proves itself",
		current: runningLlama([]string{"v1", "v2"}, []bool{true, false}),
		ms:      llamaService("v3", nil),
		want:    plannedService{start: r3, keep: []string{r1, r2, r3}, revisions: []string{r1, r2, r3}, traffic: all(r1)},
	}, {
		name:    "the first LoRA adapter makes a revision",
		current: runningLlama([]string{"v1"}, []bool{true}),
		ms:      llamaService("v1", nil, "sql"),
		want:    plannedService{start: r2, keep: []string{r1, r2}, revisions: []string{r1, r2}, traffic: all(r1)},
	}, {
		name:    "another LoRA adapter is loaded at run time",
		current: runningLlama([]string{"v1"}, []bool{true}, "sql"),
		ms:      llamaService("v1", nil, "sql", "chat"),
		want:    plannedService{keep: []string{r1}, revisions: []string{r1}, traffic: all(r1)},
	}, {
		name:    "traffic naming an unknown revision",
		current: runningLlama([]string{"v1"}, []bool{true}),
		ms:      llamaService("v1", []v1alpha1.TrafficTarget{{RevisionName: r3, Percent: pct64(100)}}),
		wantErr: `ModelService "llama": spec.traffic[0].revisionName`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			current := tc.current
			if current == nil {
				current = map[string]*serviceState{}
			}
			before := map[string][]string{}
			for id, st := range current {
				before[id] = revisionNames(st.revisions)
			}
			pl, err := planReconcile(current, []*v1alpha1.ModelService{tc.ms})
			for id, st := range current {
				require.Equal(t, before[id], revisionNames(st.revisions), "planning changes nothing")
			}
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Len(t, pl.services, 1)
			require.Empty(t, pl.removed)
			sp, cfg := pl.services[0], pl.configs[0]
			got := plannedService{keep: revisionNames(sp.keep), retire: revisionNames(sp.retire), traffic: cfg.Traffic}
			if sp.newRev != nil {
				got.start = sp.newRev.name
				require.Equal(t, sp.newRev.gen == 1, sp.newRev.ready, "only a service's first revision starts ready")
			}
			for _, rc := range cfg.Revisions {
				got.revisions = append(got.revisions, rc.Name)
			}
			require.Equal(t, tc.want, got)
			require.Equal(t, "llama", cfg.Model)
		})
	}
}

// A service gone from the file is stopped; the others are planned.
func TestPlanReconcileRemovesServices(t *testing.T) {
	current := runningLlama([]string{"v1"}, []bool{true})
	other := llamaService("v1", nil)
	other.Name, other.Spec.Model = "mistral", "mistral"
	pl, err := planReconcile(current, []*v1alpha1.ModelService{other})
	require.NoError(t, err)
	require.Equal(t, []string{"default/llama"}, pl.removed)
	require.Len(t, pl.configs, 1)
	require.Equal(t, "mistral", pl.configs[0].Name)
	require.Equal(t, "mistral-00001", pl.services[0].newRev.name)
}

func ptrTo[T any](v T) *T { return &v }
