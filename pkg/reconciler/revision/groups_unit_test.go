package revision

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
)

// lwsPod is a pod of set's group g at index w in it, as LWS makes it:
// its name, labels and controller (a StatefulSet), ready or not.
func lwsPod(set, role string, g, w int, ready bool) corev1.Pod {
	name, owner := fmt.Sprintf("%s-%d", set, g), set
	labels := map[string]string{v1alpha1.LabelRevision: "llama-00001", lwsv1.SetNameLabelKey: set,
		lwsv1.GroupIndexLabelKey: fmt.Sprint(g), lwsv1.WorkerIndexLabelKey: fmt.Sprint(w)}
	if w == 0 {
		labels[v1alpha1.LabelRole] = role
	} else {
		name, owner = fmt.Sprintf("%s-%d-%d", set, g, w), fmt.Sprintf("%s-%d", set, g)
		labels[resources.LabelGroupWorker] = role
	}
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels,
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: owner, UID: "sts-uid",
			Controller: ptr.To(true)}}}}
	p.Status.Phase = corev1.PodRunning
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}
	return p
}

func unschedulable(p corev1.Pod, msg string) corev1.Pod {
	p.Status.Phase = corev1.PodPending
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
		Reason: corev1.PodReasonUnschedulable, Message: msg}}
	return p
}

// Only pods as LWS makes them count as a group's: forged, copied or
// malformed ones are left out, whatever labels they claim.
func TestGroupPodsKeepsOnlyLWSPods(t *testing.T) {
	const set = "llama-00001-group"
	good := []corev1.Pod{lwsPod(set, "unified", 0, 0, true), lwsPod(set, "unified", 0, 1, true), lwsPod(set, "unified", 1, 0, true)}
	forge := func(mutate func(p *corev1.Pod)) corev1.Pod {
		p := lwsPod(set, "unified", 1, 1, false)
		p = unschedulable(p, "forged")
		mutate(&p)
		return p
	}
	forged := map[string]corev1.Pod{
		"no owner":           forge(func(p *corev1.Pod) { p.OwnerReferences = nil }),
		"owner not control":  forge(func(p *corev1.Pod) { p.OwnerReferences[0].Controller = nil }),
		"owner a ReplicaSet": forge(func(p *corev1.Pod) { p.OwnerReferences[0].Kind = "ReplicaSet" }),
		"owner of apps/v2":   forge(func(p *corev1.Pod) { p.OwnerReferences[0].APIVersion = "apps/v2" }),
		"owner another set":  forge(func(p *corev1.Pod) { p.OwnerReferences[0].Name = "other-group-1" }),
		"owner the leaders'": forge(func(p *corev1.Pod) { p.OwnerReferences[0].Name = set }),
		"another set's name": forge(func(p *corev1.Pod) { p.Labels[lwsv1.SetNameLabelKey] = "other-group" }),
		"a name of its own":  forge(func(p *corev1.Pod) { p.Name = "forged" }),
		"name of group 2":    forge(func(p *corev1.Pod) { p.Name = set + "-2-1" }),
		"leading zero":       forge(func(p *corev1.Pod) { p.Labels[lwsv1.GroupIndexLabelKey] = "01" }),
		"negative":           forge(func(p *corev1.Pod) { p.Labels[lwsv1.WorkerIndexLabelKey] = "-1" }),
		"plus sign":          forge(func(p *corev1.Pod) { p.Labels[lwsv1.WorkerIndexLabelKey] = "+1" }),
		"huge index":         forge(func(p *corev1.Pod) { p.Labels[lwsv1.GroupIndexLabelKey] = strings.Repeat("9", 40) }),
		"worker past size":   forge(func(p *corev1.Pod) { p.Labels[lwsv1.WorkerIndexLabelKey] = "2"; p.Name = set + "-1-2" }),
		"no worker index":    forge(func(p *corev1.Pod) { delete(p.Labels, lwsv1.WorkerIndexLabelKey) }),
		"no role label":      forge(func(p *corev1.Pod) { delete(p.Labels, resources.LabelGroupWorker) }),
		"another role":       forge(func(p *corev1.Pod) { p.Labels[resources.LabelGroupWorker] = "prefill" }),
		"a leader's labels as a worker": forge(func(p *corev1.Pod) {
			p.Labels[lwsv1.WorkerIndexLabelKey] = "0" // named and owned as a worker
		}),
	}
	for name, p := range forged {
		t.Run(name, func(t *testing.T) {
			got := groupPods(append(append([]corev1.Pod{}, good...), p), set, fleet.RoleUnified, 2)
			require.Len(t, got[0], 2)
			require.Len(t, got[1], 1, "the forged pod is not group 1's worker")
			require.Equal(t, set+"-1", got[1][0].pod.Name)
		})
	}
	got := groupPods(good, set, fleet.RoleUnified, 2)
	require.Equal(t, []int{0, 1}, []int{got[0][0].worker, got[0][1].worker})
}

func TestCanonicalIndex(t *testing.T) {
	for s, want := range map[string]int{"0": 0, "1": 1, "42": 42, "999999999": 999999999} {
		n, ok := canonicalIndex(s)
		assert.True(t, ok, s)
		assert.Equal(t, want, n, s)
	}
	for _, s := range []string{"", "00", "01", "-1", "+1", "1e3", " 1", "1 ", "0x1", "1000000000", "١"} {
		_, ok := canonicalIndex(s)
		assert.False(t, ok, "%q", s)
	}
}

// Why each group is not ready, by group index: a pod that cannot run
// first, then a pod not made yet, then a pod not ready; ready groups say
// nothing; groups past desired are left out; lines are bounded.
func TestDescribeGroups(t *testing.T) {
	const set = "demo-00001-group"
	pods := []corev1.Pod{
		lwsPod(set, "unified", 0, 0, true), lwsPod(set, "unified", 0, 1, true), // ready
		lwsPod(set, "unified", 1, 0, false),
		unschedulable(lwsPod(set, "unified", 1, 1, false), "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."),
		lwsPod(set, "unified", 2, 0, false), // no worker yet
		lwsPod(set, "unified", 3, 0, true), lwsPod(set, "unified", 3, 1, false),
		lwsPod(set, "unified", 9, 0, false), // past desired: scaled down
	}
	pods[6].Status.Conditions[0].Reason, pods[6].Status.Conditions[0].Message = "ContainersNotReady", "containers with unready status: [engine]"
	crash := lwsPod(set, "unified", 5, 0, false)
	crash.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "engine", State: corev1.ContainerState{
		Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: "back-off 40s"}}}}
	pods = append(pods, crash)
	rep := describeGroups(set, 2, 6, groupPods(pods, set, fleet.RoleUnified, 2))
	var texts []string
	for _, l := range rep.lines {
		texts = append(texts, l.text)
	}
	require.Equal(t, []string{
		"group 1: worker pod demo-00001-group-1-1 Pending: Unschedulable: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
		"group 2: 1 of 2 pods, no worker pod demo-00001-group-2-1 yet",
		"group 3: worker pod demo-00001-group-3-1 Running, not ready: ContainersNotReady: containers with unready status: [engine]",
		"group 4: no leader pod demo-00001-group-4 yet",
		"group 5: leader pod demo-00001-group-5 Running: CrashLoopBackOff: container engine keeps crashing: back-off 40s",
	}, texts)
	require.Equal(t, v1alpha1.ReasonUnschedulable, rep.lines[0].reason)
	require.Equal(t, v1alpha1.ReasonEngineFailed, rep.lines[4].reason)
	require.Empty(t, rep.lines[1].reason)
	require.Zero(t, rep.more)
	require.Len(t, rep.leaders, 6, "every leader, group 9's too")

	// A deleted pod is not ready.
	gone := lwsPod(set, "unified", 0, 1, true)
	gone.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	rep = describeGroups(set, 2, 1, groupPods([]corev1.Pod{lwsPod(set, "unified", 0, 0, true), gone}, set, fleet.RoleUnified, 2))
	require.Equal(t, "group 0: worker pod demo-00001-group-0-1 Terminating, not ready", rep.lines[0].text)
}

// A huge desired count (a forged scale) costs no more than the pods and
// the line budget; a huge pod message is clipped.
func TestDescribeGroupsIsBounded(t *testing.T) {
	const set = "demo-00001-group"
	start := time.Now()
	rep := describeGroups(set, 2, 1<<31-1, nil)
	require.Less(t, time.Since(start), time.Second)
	require.Len(t, rep.lines, v1alpha1.MaxGroupLines)
	require.Equal(t, 1<<31-1-v1alpha1.MaxGroupLines, rep.more)
	require.Equal(t, "group 7: no leader pod demo-00001-group-7 yet", rep.lines[7].text)

	var pods []corev1.Pod
	for g := 0; g < 50; g++ {
		pods = append(pods, unschedulable(lwsPod(set, "unified", g, 0, false), strings.Repeat("é", 100_000)))
	}
	rep = describeGroups(set, 2, 60, groupPods(pods, set, fleet.RoleUnified, 2))
	require.Len(t, rep.lines, v1alpha1.MaxGroupLines)
	require.Equal(t, 60-v1alpha1.MaxGroupLines, rep.more)
	for _, l := range rep.lines {
		require.LessOrEqual(t, len(l.text), maxLineBytes+len("…"))
		require.True(t, strings.HasSuffix(l.text, "…"))
		require.NotContains(t, l.text, "\uFFFD", "cut on a rune boundary")
	}
	require.Equal(t, "a; b; and 3 more group(s)", joinBounded([]string{"a", "b"}, 3))
	many := make([]string, 20)
	require.Equal(t, strings.Count(joinBounded(many, 0), ";"), v1alpha1.MaxGroupLines)
}

func TestPodsPerGroup(t *testing.T) {
	rev := newRevision("llama-00001")
	require.Equal(t, "", podsPerGroup(rev, fleet.RoleUnified), "one pod per replica")
	rev.Spec.Parallelism, rev.Spec.AcceleratorsPerNode = &v1alpha1.ParallelismSpec{Tensor: ptr.To[int32](4)}, ptr.To[int32](2)
	require.Equal(t, "2", podsPerGroup(rev, fleet.RoleUnified))
	rev.Spec.Accelerators = []v1alpha1.AcceleratorVariant{{Name: "h100", Cost: 2, AcceleratorsPerNode: ptr.To[int32](4)},
		{Name: "l40s", Cost: 1, AcceleratorsPerNode: ptr.To[int32](1)}}
	require.Equal(t, "l40s=4,h100=1", podsPerGroup(rev, fleet.RoleUnified), "cheapest first; one pod on h100")
}

// The condition follows what the cluster serves; Volcano's missing
// PodGroups are seen on the leaders LWS made.
func TestMarkGangScheduling(t *testing.T) {
	volcanoLeader := func(annotated bool) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "demo-00001-group-0"}}
		p.Spec.SchedulerName = resources.VolcanoSchedulerName
		if annotated {
			p.Annotations = map[string]string{VolcanoGroupAnnotation: "demo-00001-group-0-abc"}
		}
		return p
	}
	cos := coschedulingState{scheduler: resources.DefaultCoschedulingSchedulerName}
	forbidden := apierrs.NewForbidden(schema.GroupResource{Group: "scheduling.x-k8s.io", Resource: "podgroups"}, "g-0", errors.New("no rights"))
	for name, tc := range map[string]struct {
		grouped bool
		apis    ClusterAPIs
		leaders []*corev1.Pod
		cos     coschedulingState
		status  corev1.ConditionStatus
		reason  string
		message string
	}{
		"no groups": {apis: ClusterAPIs{Volcano: true}},
		"nothing":   {grouped: true, status: corev1.ConditionFalse, reason: v1alpha1.ReasonNoGangScheduler},
		"coscheduling": {grouped: true, apis: ClusterAPIs{Coscheduling: true}, cos: cos, status: corev1.ConditionTrue,
			reason: v1alpha1.ReasonCoscheduling, message: "then scheduler scheduler-plugins-scheduler places them all at once"},
		"coscheduling, waiting for a stale PodGroup": {grouped: true, apis: ClusterAPIs{Coscheduling: true},
			cos: coschedulingState{scheduler: "gang", release: releaseOutcome{stale: true}}, status: corev1.ConditionTrue,
			reason: v1alpha1.ReasonCoscheduling, message: "scheduler gang"},
		"coscheduling turned off": {grouped: true, apis: ClusterAPIs{Coscheduling: true}, status: corev1.ConditionFalse,
			reason: v1alpha1.ReasonCoschedulingNotSupported, message: "--coscheduling-scheduler-name is empty"},
		"coscheduling, a role with a topology key": {grouped: true, apis: ClusterAPIs{Coscheduling: true},
			cos: coschedulingState{scheduler: "gang", topologyRole: "decode"}, status: corev1.ConditionFalse,
			reason: v1alpha1.ReasonCoschedulingNotSupported, message: "role decode has a topologyKey"},
		"coscheduling without the rights": {grouped: true, apis: ClusterAPIs{Coscheduling: true},
			cos: coschedulingState{scheduler: "gang", release: releaseOutcome{forbidden: forbidden}}, status: corev1.ConditionFalse,
			reason: v1alpha1.ReasonCoschedulingNotSupported, message: "may not make its PodGroups or release the groups' gated pods (podgroups.scheduling.x-k8s.io \"g-0\" is forbidden: no rights)"},
		"volcano wins over coscheduling": {grouped: true, apis: ClusterAPIs{Volcano: true, Coscheduling: true}, cos: cos,
			status: corev1.ConditionTrue, reason: v1alpha1.ReasonVolcano},
		"volcano, a role with a topology key": {grouped: true, apis: ClusterAPIs{Volcano: true},
			cos: coschedulingState{topologyRole: "decode"}, status: corev1.ConditionFalse,
			reason: v1alpha1.ReasonVolcanoNotWithTopologyKey, message: "role decode has a topologyKey"},
		"volcano, no pods yet":      {grouped: true, apis: ClusterAPIs{Volcano: true}, status: corev1.ConditionTrue, reason: v1alpha1.ReasonVolcano},
		"volcano and coscheduling":  {grouped: true, apis: ClusterAPIs{Volcano: true, Coscheduling: true}, status: corev1.ConditionTrue, reason: v1alpha1.ReasonVolcano},
		"volcano, PodGroups made":   {grouped: true, apis: ClusterAPIs{Volcano: true}, leaders: []*corev1.Pod{volcanoLeader(true)}, status: corev1.ConditionTrue, reason: v1alpha1.ReasonVolcano},
		"volcano, LWS not set up":   {grouped: true, apis: ClusterAPIs{Volcano: true}, leaders: []*corev1.Pod{volcanoLeader(true), volcanoLeader(false)}, status: corev1.ConditionFalse, reason: v1alpha1.ReasonVolcanoPodGroupsMissing},
		"volcano, old default pods": {grouped: true, apis: ClusterAPIs{Volcano: true}, leaders: []*corev1.Pod{{}}, status: corev1.ConditionTrue, reason: v1alpha1.ReasonVolcano},
	} {
		t.Run(name, func(t *testing.T) {
			st := &v1alpha1.ModelRevisionStatus{}
			st.InitializeConditions()
			st.MarkResourcesAvailable()
			st.MarkContainerHealthy()
			markGangScheduling(st, true, ClusterAPIs{}, nil, cos) // a condition from before, cleared or replaced
			markGangScheduling(st, tc.grouped, tc.apis, tc.leaders, tc.cos)
			c := st.GetCondition(v1alpha1.RevisionConditionGangScheduled)
			if tc.status == "" {
				require.Nil(t, c)
				return
			}
			require.NotNil(t, c)
			require.Equal(t, tc.status, c.Status)
			require.Equal(t, tc.reason, c.Reason)
			require.NotEmpty(t, c.Message)
			require.Contains(t, c.Message, tc.message)
			require.Equal(t, "Info", string(c.Severity), "informational")
			require.True(t, st.IsReady(), "never makes the revision not ready")
		})
	}
}

func TestSameGroupScheduling(t *testing.T) {
	set := func(leader *string, worker string, gates ...string) *lwsv1.LeaderWorkerSet {
		l := &lwsv1.LeaderWorkerSet{}
		var gs []corev1.PodSchedulingGate
		for _, g := range gates {
			gs = append(gs, corev1.PodSchedulingGate{Name: g})
		}
		l.Spec.LeaderWorkerTemplate.WorkerTemplate.Spec.SchedulerName = worker
		l.Spec.LeaderWorkerTemplate.WorkerTemplate.Spec.SchedulingGates = gs
		if leader != nil {
			l.Spec.LeaderWorkerTemplate.LeaderTemplate = &corev1.PodTemplateSpec{}
			l.Spec.LeaderWorkerTemplate.LeaderTemplate.Spec.SchedulerName = *leader
			l.Spec.LeaderWorkerTemplate.LeaderTemplate.Spec.SchedulingGates = gs
		}
		return l
	}
	gate := resources.SchedulingGatePodGroup
	assert.True(t, sameGroupScheduling(set(ptr.To(""), ""), set(ptr.To("default-scheduler"), "default-scheduler")))
	assert.True(t, sameGroupScheduling(set(ptr.To("volcano"), "volcano"), set(nil, "volcano")))
	assert.False(t, sameGroupScheduling(set(ptr.To(""), ""), set(ptr.To("volcano"), "volcano")), "back to the default")
	assert.False(t, sameGroupScheduling(set(ptr.To("volcano"), "volcano"), set(ptr.To("volcano"), "")))
	assert.True(t, sameGroupScheduling(set(ptr.To("g"), "g", gate), set(ptr.To("g"), "g", gate)))
	assert.True(t, sameGroupScheduling(set(ptr.To(""), ""), func() *lwsv1.LeaderWorkerSet {
		l := set(ptr.To(""), "")
		l.Spec.LeaderWorkerTemplate.WorkerTemplate.Spec.SchedulingGates = []corev1.PodSchedulingGate{}
		return l
	}()), "no gates and an empty list are the same")
	assert.False(t, sameGroupScheduling(set(ptr.To("g"), "g"), set(ptr.To("g"), "g", gate)), "the gate goes")
	assert.False(t, sameGroupScheduling(set(ptr.To("g"), "g", gate), set(ptr.To("g"), "g")), "the gate comes")
	assert.False(t, sameGroupScheduling(set(ptr.To("g"), "g", gate), set(ptr.To("g"), "g", "other")))
	l := set(ptr.To("g"), "g", gate)
	l.Spec.LeaderWorkerTemplate.LeaderTemplate.Spec.SchedulingGates = nil
	assert.False(t, sameGroupScheduling(set(ptr.To("g"), "g", gate), l), "the leader's gate alone")
}

// Pods map to the revision their label names, a DNS label only.
func TestRevisionOfPod(t *testing.T) {
	pod := func(rev string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Labels: map[string]string{v1alpha1.LabelRevision: rev}}}
	}
	got := revisionOfPod(t.Context(), pod("llama-00001"))
	require.Len(t, got, 1)
	require.Equal(t, "ns", got[0].Namespace)
	require.Equal(t, "llama-00001", got[0].Name)
	for _, bad := range []string{"", "Llama", "a/b", strings.Repeat("a", 64), "-a"} {
		require.Empty(t, revisionOfPod(t.Context(), pod(bad)), "%q", bad)
	}
}

// fakeLister answers discovery with the group versions it serves; err,
// when set, fails every look.
type fakeLister struct {
	mu     sync.Mutex
	served map[string]string // group version -> kind
	err    error
	calls  atomic.Int32
}

func (f *fakeLister) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	kind, ok := f.served[gv]
	if !ok {
		g, _ := schema.ParseGroupVersion(gv)
		return nil, apierrs.NewNotFound(schema.GroupResource{Group: g.Group}, "")
	}
	return &metav1.APIResourceList{GroupVersion: gv, APIResources: []metav1.APIResource{
		{Name: "things/status", Kind: kind}, {Name: "things", Kind: kind}}}, nil
}

func (f *fakeLister) set(served map[string]string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.served, f.err = served, err
}

// The detector answers from discovery, keeps its answer for its interval,
// sees APIs come and go, keeps the last answer through a failing look,
// and does not take a subresource for the kind.
func TestAPIDetector(t *testing.T) {
	f := &fakeLister{}
	now := time.Unix(0, 0)
	var mu sync.Mutex
	d := newAPIDetector(f, 30*time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	d.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func() { mu.Lock(); now = now.Add(31 * time.Second); mu.Unlock() }

	require.Equal(t, ClusterAPIs{}, d.get())
	require.Equal(t, int32(3), f.calls.Load())
	f.set(map[string]string{"leaderworkerset.x-k8s.io/v1": "LeaderWorkerSet", VolcanoPodGroupVersion: "PodGroup"}, nil)
	require.Equal(t, ClusterAPIs{}, d.get(), "within the interval: the last answer")
	require.Equal(t, int32(3), f.calls.Load())
	advance()
	require.Equal(t, ClusterAPIs{LeaderWorkerSet: true, Volcano: true}, d.get())
	f.set(nil, errors.New("connection refused"))
	advance()
	require.Equal(t, ClusterAPIs{LeaderWorkerSet: true, Volcano: true}, d.get(), "a failing look keeps the last answer")
	f.set(map[string]string{"leaderworkerset.x-k8s.io/v1": "LeaderWorkerSet", CoschedulingPodGroupVersion: "PodGroup"}, nil)
	advance()
	require.Equal(t, ClusterAPIs{LeaderWorkerSet: true, Coscheduling: true}, d.get(), "Volcano went")
	f.set(map[string]string{VolcanoPodGroupVersion: "Queue"}, nil)
	advance()
	require.Equal(t, ClusterAPIs{}, d.get(), "another kind of the group")

	// Many reconcilers at once: no race, at most a few looks.
	advance()
	calls := f.calls.Load()
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() { defer wg.Done(); d.get() }()
	}
	wg.Wait()
	require.LessOrEqual(t, f.calls.Load()-calls, int32(3*16))
	require.GreaterOrEqual(t, f.calls.Load()-calls, int32(3))
}
