package e2e

import (
	"context"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/pkg/testing/openaitest"
)

// groupDemo is a simulated model whose replica is a serving group of two
// processes (tensor 2 on nodes of one GPU, one GPU each) that starts at
// zero, on a machine of two GPUs: one group at a time.
const groupDemo = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  model: demo
  template:
    engine:
      type: sim
      args: ["--time-scale=20", "--startup-delay=1s"]
    parallelism: {tensor: 2}
    acceleratorsPerNode: 1
    resources: {limits: {nvidia.com/gpu: "1"}}
    scaling: {minScale: 0, maxScale: 1, initialScale: 0, target: {concurrency: 128}, scaleToZeroGracePeriod: 60s, stableWindow: 4s}
`

// cmdline reads a process's argv.
func cmdline(t *testing.T, pid int) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	require.NoError(t, err)
	return strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
}

// readyGroup waits for the one replica of the revision to be a ready group
// of two processes that is not named old, and returns its status.
func readyGroup(t *testing.T, p *platform, old string) local.ReplicaStatus {
	t.Helper()
	var got local.ReplicaStatus
	require.Eventually(t, func() bool {
		st := p.replicas()
		if len(st.Replicas) != 1 {
			return false
		}
		r := st.Replicas[0]
		if r.Name == old || r.State != "Ready" || r.Group == nil || len(r.Group.Workers) != 1 {
			return false
		}
		got = r
		return true
	}, 60*time.Second, 10*time.Millisecond, "no ready group of two processes")
	return got
}

// A request brings a two-process serving group up from zero and is
// answered through the OpenAI SDK; each process holds one of the two GPUs.
// SIGKILL of the worker takes the whole group down, and a new group comes
// up whole, on the GPUs the broken one gave back, and serves again.
func TestGroupFromZeroAndRecoveredAsAUnit(t *testing.T) {
	p := startLocal(t, groupDemo, "--accelerators", "nvidia.com/gpu=2")
	st := p.replicas()
	require.Equal(t, &local.GroupsStatus{PodsPerGroup: 2, Desired: 0, Ready: 0}, st.Groups, "the status shows groups from the start")
	require.Empty(t, st.Replicas)

	client := sdk(p)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	resp, err := client.Chat.Completions.New(ctx, chatParams("hello group", 8))
	require.NoError(t, err, "the request that woke the group")
	require.NotEmpty(t, resp.Choices)
	require.NotEmpty(t, resp.Choices[0].Message.Content)

	first := readyGroup(t, p, "")
	worker := first.Group.Workers[0]
	require.Equal(t, 2, first.Group.Pods)
	require.Equal(t, 1, worker.Rank)
	require.True(t, worker.Running)
	// The status's worker is the rank 1 process of this group.
	argv := cmdline(t, worker.PID)
	i := slices.Index(argv, "--rank")
	require.Positive(t, i, "%q", argv)
	require.Equal(t, "1", argv[i+1])
	require.Equal(t, "0", cmdline(t, first.EnginePID)[slices.Index(cmdline(t, first.EnginePID), "--rank")+1])
	devices := []string{engineEnv(t, first.EnginePID, "CUDA_VISIBLE_DEVICES"), engineEnv(t, worker.PID, "CUDA_VISIBLE_DEVICES")}
	require.ElementsMatch(t, []string{"0", "1"}, devices, "each process of the group has its own GPU")
	require.Equal(t, []string{"CUDA_VISIBLE_DEVICES=" + devices[0]}, first.Devices)
	require.Equal(t, []string{"CUDA_VISIBLE_DEVICES=" + devices[1]}, worker.Devices)
	st = p.replicas()
	require.Equal(t, 1, st.Groups.Ready)
	require.Empty(t, st.Groups.NotReady)

	killed := time.Now()
	require.NoError(t, syscall.Kill(worker.PID, syscall.SIGKILL))
	second := readyGroup(t, p, first.Name)
	t.Logf("from SIGKILL of the worker to a ready group: %v", time.Since(killed))
	for _, pid := range []int{first.EnginePID, first.ProxyPID, worker.PID} {
		requireGone(t, pid, "a process of the broken group still runs")
	}
	// Both GPUs are the new group's: the broken group holds none (with two
	// GPUs, the new group could not have started otherwise).
	newWorker := second.Group.Workers[0]
	require.ElementsMatch(t, []string{"0", "1"},
		[]string{engineEnv(t, second.EnginePID, "CUDA_VISIBLE_DEVICES"), engineEnv(t, newWorker.PID, "CUDA_VISIBLE_DEVICES")})
	unplaceable, _ := p.metric("kvasir_revision_unplaceable_replicas", demoLabels)
	require.Zero(t, unplaceable)

	resp, err = client.Chat.Completions.New(ctx, chatParams("hello again", 8))
	require.NoError(t, err, "the recreated group serves")
	require.NotEmpty(t, resp.Choices)

	p.stop()
	for _, pid := range []int{newWorker.PID, second.EnginePID} {
		requireGone(t, pid, "a process of the group outlived kvasir local")
	}
}

// requireGone waits for a process to be gone (exited and reaped).
func requireGone(t *testing.T, pid int, msg string) {
	t.Helper()
	require.Eventually(t, func() bool { return syscall.Kill(pid, 0) != nil }, 30*time.Second, 10*time.Millisecond, "%s: process %d", msg, pid)
}

// roleStatus returns the status of one role ("unified", "prefill" or
// "decode") of a revision, and whether /kvasir/replicas lists it.
func roleStatus(p *platform, revision, role string) (local.RevisionStatus, bool) {
	for _, st := range p.replicasOrNil() {
		if st.Revision == revision && st.Role == role {
			return st, true
		}
	}
	return local.RevisionStatus{}, false
}

// readyGroups waits for a revision role to have exactly n replicas, every
// one a ready group of two processes, none of them named in old, and
// returns them.
func readyGroups(t *testing.T, p *platform, revision, role string, n int, old ...string) []local.ReplicaStatus {
	t.Helper()
	var got []local.ReplicaStatus
	require.Eventually(t, func() bool {
		st, ok := roleStatus(p, revision, role)
		if !ok || len(st.Replicas) != n || st.Groups == nil || st.Groups.Ready != n {
			return false
		}
		for _, r := range st.Replicas {
			if slices.Contains(old, r.Name) || r.State != "Ready" || r.Group == nil || len(r.Group.Workers) != 1 {
				return false
			}
		}
		got = st.Replicas
		return true
	}, 60*time.Second, 10*time.Millisecond, "%s %s: no %d ready groups of two processes", revision, role, n)
	return got
}

// listeningPorts returns the TCP ports a process listens on, from the
// sockets among its file descriptors that /proc/net/tcp{,6} lists in state
// LISTEN.
func listeningPorts(t *testing.T, pid int) []int {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	fds, err := os.ReadDir(dir)
	require.NoError(t, err)
	sockets := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(dir + "/" + fd.Name())
		if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			sockets[strings.TrimSuffix(inode, "]")] = true
		}
	}
	var ports []int
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(table)
		require.NoError(t, err)
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" || !sockets[f[9]] { // 0A: TCP_LISTEN
				continue
			}
			_, hexPort, _ := strings.Cut(f[1], ":")
			port, err := strconv.ParseInt(hexPort, 16, 32)
			require.NoError(t, err, "%s: %q", table, line)
			ports = append(ports, int(port))
		}
	}
	return ports
}

// requireOnlyLeaderServes checks that a group's leader is its one endpoint:
// its queue-proxy forwards to the leader engine, which listens on its API
// port, and no worker listens on any port, so none can be sent a request.
func requireOnlyLeaderServes(t *testing.T, r local.ReplicaStatus) {
	t.Helper()
	require.NotNil(t, r.Group, "%s is not a group", r.Name)
	_, port, err := net.SplitHostPort(r.EngineAddr)
	require.NoError(t, err)
	leaderPort, err := strconv.Atoi(port)
	require.NoError(t, err)
	require.Contains(t, listeningPorts(t, r.EnginePID), leaderPort, "the leader of %s serves the API", r.Name)
	qp := cmdline(t, r.ProxyPID)
	i := slices.Index(qp, "--engine-url")
	require.Positive(t, i, "%q", qp)
	require.Equal(t, "http://"+r.EngineAddr, qp[i+1], "the queue-proxy of %s fronts the leader", r.Name)
	for _, w := range r.Group.Workers {
		require.True(t, w.Running)
		require.Empty(t, listeningPorts(t, w.PID), "worker rank %d of %s listens", w.Rank, r.Name)
	}
}

// servedBy returns the number of requests each replica's queue-proxy has
// reported serving, by replica name.
func servedBy(p *platform, revision, role string) map[string]uint64 {
	out := map[string]uint64{}
	st, _ := roleStatus(p, revision, role)
	for _, r := range st.Replicas {
		if r.Stats != nil {
			out[r.Name] = r.Stats.Requests
		}
	}
	return out
}

// pdGroupFleet is a disaggregated model whose decode replica is a serving
// group of two processes (data parallel 2 with expert parallelism, one
// data-parallel rank a process) and whose prefill replica is one process.
const pdGroupFleet = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  template:
    engine: {type: sim, args: [--time-scale=20]}
    roles:
      prefill: {scaling: {minScale: 1, maxScale: 1}}
      decode: {parallelism: {data: 2, expert: true}, groupSize: 2, scaling: {minScale: 1, maxScale: 1}}
    scaling: {minScale: 1, maxScale: 1}
`

// Prefill/decode with a decode group: plain and streamed answers through
// the SDK are prefilled on the prefill replica and decoded by the group's
// leader, whose queue-proxy and engine count every one of them; the
// worker serves nothing; a prefix sent again is prefilled by the leader,
// which received its KV.
func TestGroupDecodesPrefillDecode(t *testing.T) {
	p := startLocal(t, pdGroupFleet)
	const rev = "demo-00001"
	group := readyGroups(t, p, rev, "decode", 1)[0]
	require.Eventually(t, func() bool {
		st, ok := roleStatus(p, rev, "prefill")
		return ok && st.Ready == 1
	}, 60*time.Second, 10*time.Millisecond)
	pre, _ := roleStatus(p, rev, "prefill")
	require.Nil(t, pre.Groups, "the prefill role runs one process a replica")
	require.Nil(t, pre.Replicas[0].Group)
	leaderArgv := cmdline(t, group.EnginePID)
	require.Contains(t, leaderArgv, "--role=decode")
	require.Equal(t, "0", leaderArgv[slices.Index(leaderArgv, "--rank")+1])
	require.Equal(t, "2", leaderArgv[slices.Index(leaderArgv, "--data-parallel-size")+1])
	requireOnlyLeaderServes(t, group)

	system := strings.Repeat("A long system prompt shared by every question. ", 60)
	// The streamed question has a prefix of its own: by then the decode
	// group may already report the first prefix (its queue-proxy reports
	// within --kv-flush-interval) and prefill it itself.
	streamedSystem := strings.Repeat("Another long system prompt, for the stream. ", 60)
	paramsFor := func(sys, q string) openai.ChatCompletionNewParams {
		return openai.ChatCompletionNewParams{
			Model:     "demo",
			Messages:  []openai.ChatCompletionMessageParamUnion{openai.SystemMessage(sys), openai.UserMessage(q)},
			MaxTokens: openai.Int(6),
		}
	}
	params := func(q string) openai.ChatCompletionNewParams { return paramsFor(system, q) }
	client := sdk(p)
	ctx := context.Background()
	var answer *http.Response
	first, err := client.Chat.Completions.New(ctx, params("first question"), option.WithResponseInto(&answer))
	require.NoError(t, err)
	require.Equal(t, rev, answer.Header.Get(activator.RevisionHeader))
	require.Equal(t, int64(6), first.Usage.CompletionTokens)
	require.NotEmpty(t, first.Choices[0].Message.Content)
	require.Zero(t, first.Usage.PromptTokensDetails.CachedTokens, "the decode group had nothing before the transfer")

	streamed := paramsFor(streamedSystem, "a streamed question")
	streamed.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	acc, chunks := openaitest.Accumulate(t, client.Chat.Completions.NewStreaming(ctx, streamed))
	require.GreaterOrEqual(t, chunks, 6)
	require.NotEmpty(t, acc.Choices[0].Message.Content)
	require.Equal(t, int64(6), acc.Usage.CompletionTokens)

	remote := map[string]string{"namespace": "default", "service": "demo", "revision": rev, "prefill": "remote"}
	n, ok := p.metric("kvasir_activator_pd_requests_total", remote)
	require.True(t, ok)
	require.Equal(t, 2.0, n, "both prefixes were prefilled by the prefill replica")

	// The decode leader's queue-proxy reports the transferred prefix; then
	// the same prefix is prefilled by the leader itself.
	asked := 2
	localPrefill := map[string]string{"namespace": "default", "service": "demo", "revision": rev, "prefill": "local"}
	var failed error // a failed request ends the wait, and the test
	require.Eventually(t, func() bool {
		again, err := client.Chat.Completions.New(ctx, params("question "+strconv.Itoa(asked)))
		if err != nil {
			failed = err
			return true
		}
		asked++
		n, ok := p.metric("kvasir_activator_pd_requests_total", localPrefill)
		return again.Usage.PromptTokensDetails.CachedTokens > 0 && ok && n >= 1
	}, 30*time.Second, 50*time.Millisecond, "the decode group never prefilled a prefix it held")
	require.NoError(t, failed)

	// Every request was decoded by the group's leader: its queue-proxy
	// served each, and its engine generated every token.
	require.Eventually(t, func() bool {
		return servedBy(p, rev, "decode")[group.Name] == uint64(asked)
	}, 20*time.Second, 20*time.Millisecond, "the group's leader did not serve all %d requests: %v", asked, servedBy(p, rev, "decode"))
	generated, ok := scrape(t, "http://"+group.EngineAddr+"/metrics", "vllm:generation_tokens_total", map[string]string{"model_name": "demo"})
	require.True(t, ok)
	require.Equal(t, float64(6*asked), generated)
	requireOnlyLeaderServes(t, readyGroups(t, p, rev, "decode", 1)[0])
}

// groupCanaryV1 is a model whose replica is a serving group of two
// processes (tensor 2).
const groupCanaryV1 = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  template:
    engine: {type: sim, args: [--zero-latency]}
    parallelism: {tensor: 2}
    groupSize: 2
    scaling: {minScale: 1, maxScale: 1}
`

// groupCanaryV2 changes the template (an engine argument), which makes a
// second revision of groups, and splits the traffic 50/50 with the latest
// revision tagged canary.
const groupCanaryV2 = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  template:
    engine: {type: sim, args: [--zero-latency, --default-max-tokens=32]}
    parallelism: {tensor: 2}
    groupSize: 2
    scaling: {minScale: 1, maxScale: 1}
  traffic:
    - {revisionName: demo-00001, percent: 50}
    - {latestRevision: true, percent: 50, tag: canary}
`

// answeredBy sends one chat request through the SDK, with the tag header
// when tag is not empty, and returns the revision that answered it.
func answeredBy(t *testing.T, client openai.Client, tag string) string {
	t.Helper()
	opts := []option.RequestOption{}
	if tag != "" {
		opts = append(opts, option.WithHeader(activator.TagHeader, tag))
	}
	var answer *http.Response
	resp, err := client.Chat.Completions.New(context.Background(), chatParams("hi", 1), append(opts, option.WithResponseInto(&answer))...)
	require.NoError(t, err)
	require.NotEmpty(t, resp.Choices[0].Message.Content)
	return answer.Header.Get(activator.RevisionHeader)
}

// A canary of a grouped model: editing the file's template starts the
// second revision's group while the first's serves; the traffic splits
// between the two revisions' groups, the tag reaches the canary's, and
// every request is served by a group's leader, never a worker.
func TestGroupCanary(t *testing.T) {
	p := startLocal(t, groupCanaryV1)
	client := sdk(p)
	first := readyGroups(t, p, "demo-00001", "unified", 1)[0]
	sent := map[string]int{}
	sent[answeredBy(t, client, "")]++
	require.Equal(t, map[string]int{"demo-00001": 1}, sent)

	require.NoError(t, os.WriteFile(p.File, []byte(groupCanaryV2), 0o644))
	canary := readyGroups(t, p, "demo-00002", "unified", 1)[0]
	require.Eventually(t, func() bool {
		code, rev := try(t, p, "canary") // 404 (no such tag) until the edit is applied
		if code == http.StatusOK {
			sent[rev]++
		}
		return rev == "demo-00002"
	}, 60*time.Second, 20*time.Millisecond, "the canary tag reaches the new revision once its group is ready")
	for range 10 {
		require.Equal(t, "demo-00002", answeredBy(t, client, "canary"))
		sent["demo-00002"]++
	}
	split := map[string]int{}
	for range 200 {
		split[answeredBy(t, client, "")]++
	}
	require.Equal(t, 200, split["demo-00001"]+split["demo-00002"], "%v", split)
	require.InDelta(t, 100, split["demo-00002"], 40, "about half to the canary: %v", split)
	for rev, n := range split {
		sent[rev] += n
	}

	// Each revision's requests were all served by its group's leader.
	for _, g := range []struct {
		rev    string
		leader local.ReplicaStatus
	}{{"demo-00001", first}, {"demo-00002", canary}} {
		require.Eventually(t, func() bool {
			return servedBy(p, g.rev, "unified")[g.leader.Name] == uint64(sent[g.rev])
		}, 20*time.Second, 20*time.Millisecond, "%s: sent %d, served %v", g.rev, sent[g.rev], servedBy(p, g.rev, "unified"))
		requireOnlyLeaderServes(t, readyGroups(t, p, g.rev, "unified", 1)[0])
	}
}

// twoGroups is a model served by two serving groups of two processes
// (tensor 2) in real time: a request of 100 tokens decodes for about 0.4 s.
const twoGroups = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  model: demo
  template:
    engine: {type: sim}
    parallelism: {tensor: 2}
    groupSize: 2
    scaling: {minScale: 2, maxScale: 2}
`

// SIGKILL of a worker while non-streamed requests run on its group and
// more keep arriving: the group's leader fails them before their first
// byte, the activator retries them on the other group, and no client sees
// an error; the broken group comes back whole and serves again.
func TestGroupLossRetriedOnAnotherGroup(t *testing.T) {
	p := startLocal(t, twoGroups)
	groups := readyGroups(t, p, "demo-00001", "unified", 2)
	victim := groups[0]
	stop := sustain(t, p, 6, 100)
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	victimMetrics := "http://" + victim.EngineAddr + "/metrics"
	require.Eventually(t, func() bool {
		running, _ := scrape(t, victimMetrics, "vllm:num_requests_running", nil)
		return running >= 2
	}, 30*time.Second, 5*time.Millisecond, "requests in flight on the victim group")
	killed := time.Now()
	require.NoError(t, syscall.Kill(victim.Group.Workers[0].PID, syscall.SIGKILL))

	retries := func() float64 {
		n, _ := p.metric("kvasir_activator_retries_total", demoLabels)
		return n
	}
	require.Eventually(t, func() bool { return retries() >= 1 }, 30*time.Second, 10*time.Millisecond,
		"the requests in flight on the broken group were retried")
	replaced := readyGroups(t, p, "demo-00001", "unified", 2, victim.Name)
	t.Logf("from SIGKILL of the worker to two ready groups again: %v; %v retries", time.Since(killed), retries())
	var fresh string
	for _, g := range replaced {
		if g.Name != groups[1].Name {
			fresh = g.Name
		}
	}
	require.NotEmpty(t, fresh, "the surviving group %s is still there: %v", groups[1].Name, replaced)
	require.Eventually(t, func() bool { return servedBy(p, "demo-00001", "unified")[fresh] > 0 }, 30*time.Second, 10*time.Millisecond,
		"the recreated group serves")
	stop()
	stop = nil // every request, those in flight at the kill among them, succeeded
	for _, pid := range []int{victim.EnginePID, victim.ProxyPID, victim.Group.Workers[0].PID} {
		requireGone(t, pid, "a process of the broken group still runs")
	}
}
