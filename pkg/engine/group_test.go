package engine

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

// shape derives a replica's shape as the API does.
func shape(t *testing.T, p *v1alpha1.ParallelismSpec, perNode, groupSize int32) v1alpha1.GroupShape {
	t.Helper()
	var pn, gs *int32
	if perNode > 0 {
		pn = &perNode
	}
	if groupSize > 0 {
		gs = &groupSize
	}
	g, err := v1alpha1.DeriveGroup(p, pn, gs)
	require.NoError(t, err)
	return g
}

func parallelism(tensor, pipeline, data int32, expert bool) *v1alpha1.ParallelismSpec {
	return &v1alpha1.ParallelismSpec{Tensor: &tensor, Pipeline: &pipeline, Data: &data, Expert: expert}
}

// lws is the leader's address on Kubernetes, which LeaderWorkerSet gives
// every pod of a group in its environment.
const lws = "$(LWS_LEADER_ADDRESS)"

// lwsRank is a pod's rank on Kubernetes, from the same environment.
const lwsRank = "$(LWS_WORKER_INDEX)"

// lwsWorker is the place of every worker of a LeaderWorkerSet group.
func lwsWorker(g v1alpha1.GroupShape) *Group {
	return &Group{Shape: g, Rank: 1, RankVar: lwsRank, LeaderAddress: lws}
}

// Every group's command lines, per rank, as data: testdata/<name>.golden
// (go test ./pkg/engine -update rewrites them).
func TestGroupCommandLines(t *testing.T) {
	vllm := v1alpha1.EngineSpec{Type: v1alpha1.EngineVLLM, Port: 8000}
	sglang := v1alpha1.EngineSpec{Type: v1alpha1.EngineSGLang, Port: 8000}
	sim := v1alpha1.EngineSpec{Type: v1alpha1.EngineSim, Port: 8000}
	tp8pp2 := shape(t, parallelism(8, 2, 1, false), 8, 0)
	dp16ep := shape(t, parallelism(1, 1, 16, true), 8, 0)
	tp16 := shape(t, parallelism(16, 1, 1, false), 8, 0)
	dp16tp1ep := dp16ep
	dpAttention := shape(t, parallelism(1, 1, 8, true), 8, 0)
	simPair := shape(t, parallelism(2, 1, 1, false), 0, 2)
	const model = "deepseek-ai/DeepSeek-R1"
	group := func(g v1alpha1.GroupShape, rank int32, leader, port string) *Group {
		return &Group{Shape: g, Rank: rank, LeaderAddress: leader, Port: port}
	}
	cases := map[string]Spec{
		// tensor 8 x pipeline 2 on 8-GPU nodes: Ray across the 2 pods.
		"vllm-tp8-pp2-rank0": {Engine: vllm, Model: "meta-llama/Llama-3.1-405B-Instruct", Group: group(tp8pp2, 0, lws, "")},
		"vllm-tp8-pp2-rank1": {Engine: vllm, Model: "meta-llama/Llama-3.1-405B-Instruct", Group: group(tp8pp2, 1, lws, "")},
		// The same with vLLM's multiprocessing executor across nodes.
		"vllm-tp8-pp2-mp-rank0": {Engine: vllm, Model: "meta-llama/Llama-3.1-405B-Instruct",
			Group: &Group{Shape: tp8pp2, Rank: 0, LeaderAddress: lws, VLLMMultiNode: VLLMMultiNodeMP}},
		"vllm-tp8-pp2-mp-rank1": {Engine: vllm, Model: "meta-llama/Llama-3.1-405B-Instruct",
			Group: &Group{Shape: tp8pp2, Rank: 1, LeaderAddress: lws, VLLMMultiNode: VLLMMultiNodeMP}},
		// data 16 with expert parallelism across 2 nodes, as decode.
		"vllm-dp16-ep-rank0": {Engine: vllm, Model: model, Role: "decode", Group: group(dp16ep, 0, lws, "")},
		"vllm-dp16-ep-rank1": {Engine: vllm, Model: model, Role: "decode", Group: group(dp16ep, 1, lws, "")},
		// One pod, parallelism declared: the flags and nothing of groups.
		"vllm-tp4": {Engine: vllm, Model: "meta-llama/Llama-3.1-70B-Instruct",
			Group: &Group{Shape: shape(t, parallelism(4, 1, 1, false), 8, 0)}},
		"sglang-tp16-rank0": {Engine: sglang, Model: "meta-llama/Llama-3.1-405B-Instruct", Group: group(tp16, 0, lws, "")},
		"sglang-tp16-rank1": {Engine: sglang, Model: "meta-llama/Llama-3.1-405B-Instruct", Group: group(tp16, 1, lws, "")},
		// Data-parallel attention with expert parallelism: one 8-GPU pod,
		// and 16 ranks across 2 pods.
		"sglang-dp-attention":  {Engine: sglang, Model: model, Group: group(dpAttention, 0, "", "")},
		"sglang-dp16-ep-rank0": {Engine: sglang, Model: model, Group: group(dp16tp1ep, 0, lws, "")},
		"sglang-dp16-ep-rank1": {Engine: sglang, Model: model, Group: group(dp16tp1ep, 1, lws, "")},
		// The simulator in a group of 2 in local mode.
		"sim-group-rank0": {Engine: sim, Model: "demo", Port: PortVar, KVEventsPort: KVEventsPortVar,
			SimCommand: []string{"/usr/local/bin/kvasir", "sim"}, Group: group(simPair, 0, "127.0.0.1", "29600")},
		"sim-group-rank1": {Engine: sim, Model: "demo", Port: PortVar, KVEventsPort: KVEventsPortVar,
			SimCommand: []string{"/usr/local/bin/kvasir", "sim"}, Group: group(simPair, 1, "127.0.0.1", "29600")},
		"custom-group-rank1": {Engine: v1alpha1.EngineSpec{Type: v1alpha1.EngineCustom, Port: 9000, Command: []string{"srv"},
			Args: []string{"--rank", "$(KVASIR_GROUP_RANK)"}}, Model: "m", Group: group(simPair, 1, "fd00::1", "")},
		// Kubernetes' one worker template of a LeaderWorkerSet: the rank
		// is $(LWS_WORKER_INDEX), which the kubelet expands per pod.
		"vllm-tp8-pp2-worker-lws": {Engine: vllm, Model: "meta-llama/Llama-3.1-405B-Instruct", Group: lwsWorker(tp8pp2)},
		"vllm-tp8-pp2-mp-worker-lws": {Engine: vllm, Model: "meta-llama/Llama-3.1-405B-Instruct",
			Group: &Group{Shape: tp8pp2, Rank: 1, RankVar: lwsRank, LeaderAddress: lws, VLLMMultiNode: VLLMMultiNodeMP}},
		"vllm-dp16-ep-worker-lws": {Engine: vllm, Model: model, Role: "decode", Group: lwsWorker(dp16ep)},
		"vllm-dp2-tp8-worker-lws": {Engine: vllm, Model: model, Group: lwsWorker(shape(t, parallelism(8, 1, 2, false), 8, 0))},
		"sglang-tp16-worker-lws":  {Engine: sglang, Model: "meta-llama/Llama-3.1-405B-Instruct", Group: lwsWorker(tp16)},
		"sim-group-worker-lws":    {Engine: sim, Model: "demo", Group: lwsWorker(simPair)},
		"custom-group-worker-lws": {Engine: v1alpha1.EngineSpec{Type: v1alpha1.EngineCustom, Port: 9000, Command: []string{"srv"}},
			Model: "m", Group: lwsWorker(simPair)},
	}
	for name, s := range cases {
		t.Run(name, func(t *testing.T) {
			l, err := Build(s)
			require.NoError(t, err)
			got := render(l)
			file := filepath.Join("testdata", name+".golden")
			if *update {
				require.NoError(t, os.WriteFile(file, []byte(got), 0o644))
			}
			want, err := os.ReadFile(file)
			require.NoError(t, err, "go test ./pkg/engine -update writes it")
			require.Equal(t, string(want), got)
			checkFlags(t, s.Engine.Type, l.Argv())
		})
	}
}

// knownFlags reads testdata/flags-<engine>.txt: the flags of the argument
// parsers the mapping was written against, one a line, # comments.
func knownFlags(t *testing.T, name string) map[string]bool {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "flags-"+name+".txt"))
	require.NoError(t, err)
	defer f.Close()
	known := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "#") {
			known[line] = true
		}
	}
	require.NoError(t, sc.Err())
	return known
}

// checkFlags fails on a flag the engine's parser (or Ray's) does not have.
func checkFlags(t *testing.T, typ v1alpha1.EngineType, argv []string) {
	t.Helper()
	var parser string
	switch {
	case len(argv) > 1 && argv[0] == "ray":
		parser = "ray"
	case typ == v1alpha1.EngineVLLM:
		parser = "vllm"
	case typ == v1alpha1.EngineSGLang:
		parser = "sglang"
	default:
		return // the simulator learns its flags with its own tests
	}
	known := knownFlags(t, parser)
	for _, a := range argv {
		if strings.HasPrefix(a, "--") && !strings.Contains(a, " ") {
			name, _, _ := strings.Cut(a, "=")
			require.True(t, known[name], "%s has no flag %s (testdata/flags-%s.txt)", parser, name, parser)
		}
	}
}

// A nil group and a group of one undeclared pod give exactly the command
// lines of before groups, for every golden of TestCommandLines.
func TestUngroupedCommandLinesUnchanged(t *testing.T) {
	one := &Group{Shape: v1alpha1.GroupShape{Tensor: 1, Pipeline: 1, Data: 1, Accelerators: 1, Pods: 1, AcceleratorsPerPod: 1}}
	for _, e := range []v1alpha1.EngineSpec{
		{Type: v1alpha1.EngineVLLM, Port: 8000}, {Type: v1alpha1.EngineSGLang, Port: 8000},
		{Type: v1alpha1.EngineSim, Port: 8000}, {Type: v1alpha1.EngineCustom, Port: 9000, Command: []string{"c"}},
	} {
		s := Spec{Engine: e, Model: "m", LoRAAdapters: []string{"a"}, Role: "prefill", RoleArgs: []string{"--x"}}
		before, err := Build(s)
		require.NoError(t, err)
		s.Group = one
		after, err := Build(s)
		require.NoError(t, err)
		require.Equal(t, before, after, "%s", e.Type)
	}
}

// The platform's parallelism flags come after the template's, so that
// they win.
func TestGroupFlagsComeLast(t *testing.T) {
	g := &Group{Shape: shape(t, parallelism(8, 2, 1, false), 8, 0), Rank: 0, LeaderAddress: "10.0.0.1", VLLMMultiNode: VLLMMultiNodeMP}
	l, err := Build(Spec{Engine: v1alpha1.EngineSpec{Type: v1alpha1.EngineVLLM, Port: 8000,
		Args: []string{"--tensor-parallel-size", "2", "--master-addr", "evil", "--node-rank", "7"}}, Model: "m", Group: g})
	require.NoError(t, err)
	require.Equal(t, "8", last(l.Args, "--tensor-parallel-size"))
	require.Equal(t, "10.0.0.1", last(l.Args, "--master-addr"))
	require.Equal(t, "0", last(l.Args, "--node-rank"))
	l, err = Build(Spec{Engine: v1alpha1.EngineSpec{Type: v1alpha1.EngineSGLang, Port: 8000,
		Args: []string{"--tp-size", "1", "--nnodes", "9"}}, Model: "m", Group: g})
	require.NoError(t, err)
	require.Equal(t, "8", last(l.Args, "--tp-size"), "SGLang counts tensor × data in --tp-size, pipeline apart")
	require.Equal(t, "2", last(l.Args, "--pp-size"))
	require.Equal(t, "2", last(l.Args, "--nnodes"))
}

// The Ray leader's shell runs nothing of the template: the port and the
// whole vLLM command line are arguments of a fixed script.
func TestRayLeaderScriptIsFixed(t *testing.T) {
	g := &Group{Shape: shape(t, parallelism(16, 1, 1, false), 8, 0), LeaderAddress: "leader", Port: "$(RAY_PORT)"}
	l, err := Build(Spec{Engine: v1alpha1.EngineSpec{Type: v1alpha1.EngineVLLM, Port: 8000,
		Args: []string{"; rm -rf / #", "$(touch /tmp/x)"}}, Model: "m`id`", Group: g,
		EngineCommand: []string{"/opt/venv/bin/vllm", "serve"}})
	require.NoError(t, err)
	require.Equal(t, []string{"/bin/sh", "-c", rayLeaderScript, "kvasir-ray-head", "$(RAY_PORT)", "/opt/venv/bin/vllm", "serve"}, l.Command)
	require.Equal(t, "m`id`", l.Args[0])
	require.Equal(t, "ray", last(l.Args, "--distributed-executor-backend"))
}

func TestGroupRefusesMalformed(t *testing.T) {
	good := func() *Group {
		return &Group{Shape: shape(t, parallelism(8, 1, 2, true), 8, 0), Rank: 1, LeaderAddress: "10.0.0.1", Port: "29550"}
	}
	for name, tc := range map[string]struct {
		engine v1alpha1.EngineType
		edit   func(*Group)
		want   string
	}{
		"rank beyond the group":    {edit: func(g *Group) { g.Rank = 2 }, want: "rank 2 out of 0..1"},
		"negative rank":            {edit: func(g *Group) { g.Rank = -1 }, want: "rank -1"},
		"no leader":                {edit: func(g *Group) { g.LeaderAddress = "" }, want: "leader address"},
		"leader reads as a flag":   {edit: func(g *Group) { g.LeaderAddress = "--headless" }, want: "leader address"},
		"leader with a space":      {edit: func(g *Group) { g.LeaderAddress = "a b" }, want: "leader address"},
		"leader with a semicolon":  {edit: func(g *Group) { g.LeaderAddress = "a;reboot" }, want: "leader address"},
		"leader with a backquote":  {edit: func(g *Group) { g.LeaderAddress = "`id`" }, want: "leader address"},
		"leader with an equals":    {edit: func(g *Group) { g.LeaderAddress = "a=b" }, want: "leader address"},
		"leader too long":          {edit: func(g *Group) { g.LeaderAddress = strings.Repeat("a", 254) }, want: "leader address"},
		"leader with a newline":    {edit: func(g *Group) { g.LeaderAddress = "a\nb" }, want: "leader address"},
		"port 0":                   {edit: func(g *Group) { g.Port = "0" }, want: "port"},
		"port too big":             {edit: func(g *Group) { g.Port = "65536" }, want: "port"},
		"port with a sign":         {edit: func(g *Group) { g.Port = "+80" }, want: "port"},
		"port with a leading zero": {edit: func(g *Group) { g.Port = "080" }, want: "port"},
		"port not a number":        {edit: func(g *Group) { g.Port = "http" }, want: "port"},
		"port placeholder broken":  {edit: func(g *Group) { g.Port = "$(A B)" }, want: "port"},
		"port command":             {edit: func(g *Group) { g.Port = "$(reboot)x" }, want: "port"},
		"unknown multi-node":       {edit: func(g *Group) { g.VLLMMultiNode = "slurm" }, want: "unknown vLLM multi-node"},
		"zero pods":                {edit: func(g *Group) { g.Shape.Pods = 0 }, want: "pods size 0"},
		"zero tensor":              {edit: func(g *Group) { g.Shape.Tensor = 0 }, want: "tensor size 0"},
		"huge data":                {edit: func(g *Group) { g.Shape.Data = 1 << 30 }, want: "data size"},
		"accelerators that lie":    {edit: func(g *Group) { g.Shape.Accelerators = 8 }, want: "do not split evenly"},
		"per pod that lies":        {edit: func(g *Group) { g.Shape.AcceleratorsPerPod = 16 }, want: "do not split evenly"},
		"uneven split":             {edit: func(g *Group) { g.Shape.Pods = 3 }, want: "do not split evenly"},
		"undeclared group": {edit: func(g *Group) {
			g.Shape = v1alpha1.GroupShape{Tensor: 2, Pipeline: 1, Data: 1, Accelerators: 2, Pods: 2, AcceleratorsPerPod: 1}
		}, want: "without declared parallelism"},
		"expert over one rank": {edit: func(g *Group) {
			g.Shape = v1alpha1.GroupShape{Tensor: 1, Pipeline: 2, Data: 1, Expert: true, Declared: true, Accelerators: 2, Pods: 2, AcceleratorsPerPod: 1}
		}, want: "expert parallelism"},
		"rank placeholder on the leader": {edit: func(g *Group) { g.Rank, g.RankVar = 0, "$(LWS_WORKER_INDEX)" }, want: "rank placeholder"},
		"rank placeholder a command":     {edit: func(g *Group) { g.RankVar = "$(id)x" }, want: "rank placeholder"},
		"rank placeholder a number":      {edit: func(g *Group) { g.RankVar = "1" }, want: "rank placeholder"},
		"rank placeholder a flag":        {edit: func(g *Group) { g.RankVar = "--headless" }, want: "rank placeholder"},
		"rank placeholder with a space":  {edit: func(g *Group) { g.RankVar = "$(A B)" }, want: "rank placeholder"},
		"rank placeholder shell":         {edit: func(g *Group) { g.RankVar = "${IFS}" }, want: "rank placeholder"},
		"vLLM data ranks split over pods": {edit: func(g *Group) {
			g.Shape = shape(t, parallelism(8, 1, 2, false), 4, 0)
		}, want: "data 2 is not a multiple of 4 pods"},
	} {
		t.Run(name, func(t *testing.T) {
			g := good()
			tc.edit(g)
			engine := tc.engine
			if engine == "" {
				engine = v1alpha1.EngineVLLM
			}
			_, err := Build(Spec{Engine: v1alpha1.EngineSpec{Type: engine, Port: 8000}, Model: "m", Group: g})
			require.ErrorContains(t, err, tc.want)
		})
	}
	// SGLang's data-parallel attention ranks may span pods.
	_, err := Build(Spec{Engine: v1alpha1.EngineSpec{Type: v1alpha1.EngineSGLang, Port: 8000}, Model: "m",
		Group: &Group{Shape: shape(t, parallelism(8, 1, 2, false), 4, 0), Rank: 3, LeaderAddress: "l"}})
	require.NoError(t, err)
}

// Every rank of a group gets the same engine configuration; only the
// leader is told to publish KV events (a worker has no queue-proxy).
func TestWorkersPublishNoKVEvents(t *testing.T) {
	g := shape(t, parallelism(1, 1, 16, true), 8, 0)
	for _, typ := range []v1alpha1.EngineType{v1alpha1.EngineVLLM, v1alpha1.EngineSGLang, v1alpha1.EngineSim} {
		e := v1alpha1.EngineSpec{Type: typ, Port: 8000,
			Tokenizer: &v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerBuiltin}}
		leader, err := Build(Spec{Engine: e, Model: "m", LoRAAdapters: []string{"a"}, Group: &Group{Shape: g, LeaderAddress: "l"}})
		require.NoError(t, err)
		worker, err := Build(Spec{Engine: e, Model: "m", LoRAAdapters: []string{"a"}, Group: &Group{Shape: g, Rank: 1, LeaderAddress: "l"}})
		require.NoError(t, err)
		require.Contains(t, strings.Join(leader.Args, " "), "--kv-events", "%s", typ)
		require.NotContains(t, strings.Join(worker.Args, " "), "--kv-events", "%s", typ)
		require.Contains(t, worker.Args, "a=a", "%s: adapters on every rank", typ)
	}
}

// A worker whose rank is a placeholder and whose pod holds several
// data-parallel ranks computes its first rank in a fixed shell script: run
// it as the kubelet would after expanding $(LWS_WORKER_INDEX), and with
// forged ranks, which it refuses before any arithmetic.
func TestDPStartRankScript(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	g := lwsWorker(shape(t, parallelism(1, 1, 16, true), 8, 0))
	l, err := Build(Spec{Engine: v1alpha1.EngineSpec{Type: v1alpha1.EngineVLLM, Port: 8000,
		Args: []string{"; rm -rf / #", "$(touch /tmp/x)"}}, Model: "m`id`", Group: g, EngineCommand: []string{"echo"}})
	require.NoError(t, err)
	require.Equal(t, []string{"/bin/sh", "-c", dpStartRankScript, "kvasir-dp-rank", lwsRank, "8", "echo"}, l.Command)
	require.NotContains(t, l.Args, "--data-parallel-start-rank", "the script appends it")
	run := func(rank string) (string, error) {
		argv := append(append([]string{}, l.Command[1:]...), l.Args...)
		argv[3] = rank // the kubelet's expansion
		out, err := exec.Command(sh, argv...).CombinedOutput()
		return string(out), err
	}
	for rank, want := range map[string]string{"1": "8", "3": "24", "0": "0"} {
		out, err := run(rank)
		require.NoError(t, err, out)
		fields := strings.Fields(out)
		require.Equal(t, "--data-parallel-start-rank", fields[len(fields)-2], out)
		require.Equal(t, want, fields[len(fields)-1], "rank %s", rank)
		require.Contains(t, out, "; rm -rf / # $(touch /tmp/x)", "the template's arguments pass through as data")
	}
	for _, forged := range []string{lwsRank, "", "-1", "1;id", "1 1", "x", "a[$(id)]", "1\n2"} {
		out, err := run(forged)
		require.Error(t, err, "rank %q: %s", forged, out)
		require.Contains(t, out, "is not a number", "rank %q", forged)
	}
}
