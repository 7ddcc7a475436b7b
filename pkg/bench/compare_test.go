package bench

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/local"
)

const fleetDoc = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  model: demo
  template:
    engine:
      type: sim
      args: ["--time-scale=2", "--kv-blocks=9216"]
    scaling: {minScale: 3, maxScale: 3, initialScale: 3}
`

const benchmarkDocYAML = `apiVersion: bench.kvasir.dev/v1alpha1
kind: Benchmark
metadata: {name: long-system-prompt}
spec:
  warmupTimeout: 90s
  workload:
    workload: generated-shared-prefix
    model: demo
    groups: 32
    prompts-per-group: 16
    system-prompt-len: 4096
    question-len: 256
    output-len: 128
    rate: 100
    max-concurrency: 64
    stream: true
    duration: 2m
  strategies:
    - name: random
      plugins: [{name: random}]
    - name: kv-cache-aware+least-request
      plugins: [{name: kv-cache-aware, weight: 3}, {name: least-request, weight: 2}]
`

func goodFile() string { return fleetDoc + "---\n" + benchmarkDocYAML }

func TestParseComparison(t *testing.T) {
	c, err := ParseComparison("good.yaml", []byte(goodFile()))
	require.NoError(t, err)
	assert.Equal(t, "long-system-prompt", c.Name)
	assert.Equal(t, 90*time.Second, c.WarmupTimeout)
	assert.Equal(t, 1, c.Activators, "one activator unless spec.activators says otherwise")

	want := DefaultConfig()
	want.Workload = WorkloadSharedPrefix
	want.Model = "demo"
	want.Groups, want.PromptsPerGroup = 32, 16
	want.SystemPromptLen, want.QuestionLen, want.OutputLen = 4096, 256, 128
	want.Rate, want.MaxConcurrency = 100, 64
	want.Duration = 2 * time.Minute
	assert.Equal(t, want, c.Config, "every key set as its flag, the rest at the flag defaults; no target")

	require.Len(t, c.Strategies, 2)
	assert.Equal(t, Strategy{Name: "random", Plugins: []v1alpha1.RoutingPlugin{{Name: "random"}}}, c.Strategies[0])
	assert.Equal(t, Strategy{Name: "kv-cache-aware+least-request", Plugins: []v1alpha1.RoutingPlugin{
		{Name: "kv-cache-aware", Weight: 3}, {Name: "least-request", Weight: 2}}}, c.Strategies[1])
	require.Len(t, c.Fleet, 1)
	assert.Equal(t, "demo", c.Fleet[0].Name)
	assert.Equal(t, 3, expectedReplicas(c.Fleet[0], "unified"))

	// Each strategy's fleet is the file's ModelService with only
	// spec.routing set, and reads back with `kvasir local`'s loader.
	for _, s := range c.Strategies {
		b, err := c.FleetYAML(s)
		require.NoError(t, err)
		fleet, err := local.Load("fleet.yaml", b)
		require.NoError(t, err, "%s", b)
		require.Len(t, fleet, 1)
		ms := fleet[0]
		require.NotNil(t, ms.Spec.Routing)
		assert.Equal(t, s.Plugins, ms.Spec.Routing.Plugins)
		assert.Equal(t, []string{"--time-scale=2", "--kv-blocks=9216"}, ms.Spec.Template.Engine.Args)
		assert.Equal(t, int32(3), *ms.Spec.Template.Scaling.MinScale)
		assert.NotContains(t, string(b), "Benchmark")
	}
	// The parsed file is not changed by rendering.
	assert.Nil(t, c.Fleet[0].Spec.Routing)
}

func TestParseComparisonDefaultsAndOverrides(t *testing.T) {
	// A ModelService's own routing is replaced by each strategy's; a
	// strategy without plugins gets the platform's default routing.
	doc := strings.Replace(fleetDoc, "  model: demo\n", "  model: demo\n  routing: {plugins: [{name: round-robin}]}\n", 1)
	bdoc := strings.Replace(benchmarkDocYAML, "  warmupTimeout: 90s\n", "", 1)
	bdoc = strings.Replace(bdoc, "    - name: random\n      plugins: [{name: random}]\n", "    - name: default\n", 1)
	c, err := ParseComparison("f.yaml", []byte("---\n"+bdoc+"---\n"+doc))
	require.NoError(t, err)
	assert.Equal(t, DefaultWarmupTimeout, c.WarmupTimeout)
	assert.Equal(t, "default", c.Strategies[0].Name)
	assert.Empty(t, c.Strategies[0].Plugins)

	b, err := c.FleetYAML(c.Strategies[0])
	require.NoError(t, err)
	fleet, err := local.Load("fleet.yaml", b)
	require.NoError(t, err)
	assert.Nil(t, fleet[0].Spec.Routing)

	b, err = c.FleetYAML(c.Strategies[1])
	require.NoError(t, err)
	fleet, err = local.Load("fleet.yaml", b)
	require.NoError(t, err)
	assert.Equal(t, c.Strategies[1].Plugins, fleet[0].Spec.Routing.Plugins)
	// Document numbers are kept: the ModelService is still document 3.
	assert.Len(t, local.SplitDocuments(b), 3)
	assert.Contains(t, local.SplitDocuments(b)[2], "kind: ModelService")
}

func TestStrategyEngineOverride(t *testing.T) {
	// A strategy may change fields of the engine: the same fleet with the
	// engine's KV events off (approximate prefix routing) or on (precise).
	bdoc := strings.Replace(benchmarkDocYAML, "    - name: random\n      plugins: [{name: random}]\n",
		"    - name: approximate\n      plugins: [{name: kv-cache-aware}]\n      engine: {kvEvents: {enabled: false}}\n", 1)
	c, err := ParseComparison("f.yaml", []byte(fleetDoc+"---\n"+bdoc))
	require.NoError(t, err)
	b, err := c.FleetYAML(c.Strategies[0])
	require.NoError(t, err)
	fleet, err := local.Load("fleet.yaml", b)
	require.NoError(t, err)
	e := fleet[0].Spec.Template.Engine
	require.NotNil(t, e.KVEvents)
	require.NotNil(t, e.KVEvents.Enabled)
	assert.False(t, *e.KVEvents.Enabled)
	assert.Equal(t, v1alpha1.EngineSim, e.Type, "the other engine fields stay")
	assert.Equal(t, []string{"--time-scale=2", "--kv-blocks=9216"}, e.Args)
	b, err = c.FleetYAML(c.Strategies[1])
	require.NoError(t, err)
	assert.NotContains(t, string(b), "kvEvents")
	assert.Nil(t, c.Fleet[0].Spec.Template.Engine.KVEvents, "the parsed file is not changed")

	// A bad override fails when the file is read, naming the strategy.
	bad := strings.Replace(bdoc, "engine: {kvEvents: {enabled: false}}", "engine: {kvEvents: {endpoint: http://x}}", 1)
	_, err = ParseComparison("f.yaml", []byte(fleetDoc+"---\n"+bad))
	require.ErrorContains(t, err, "approximate")
}

func TestParseComparisonErrors(t *testing.T) {
	bench := func(old, new string) string {
		require.Contains(t, benchmarkDocYAML, old)
		return fleetDoc + "---\n" + strings.Replace(benchmarkDocYAML, old, new, 1)
	}
	cases := []struct {
		name string
		file string
		want []string // substrings of the error
	}{
		{"unknown workload key", bench("    groups: 32\n", "    groups: 32\n    group-count: 3\n"),
			[]string{"good.yaml: document 2", `Benchmark "long-system-prompt"`, "spec.workload.group-count: unknown key"}},
		{"flag spelled with dashes", bench("    groups: 32\n", "    --groups: 32\n"),
			[]string{"spec.workload.--groups: unknown key: write the flag's name without dashes: groups"}},
		{"missing Benchmark document", fleetDoc,
			[]string{"good.yaml: no Benchmark document"}},
		{"two Benchmark documents", goodFile() + "---\n" + benchmarkDocYAML,
			[]string{"good.yaml: document 3: a second Benchmark document (the first is document 2)"}},
		{"empty strategies", strings.Split(goodFile(), "  strategies:\n")[0] + "  strategies: []\n",
			[]string{"good.yaml: document 2", "spec.strategies: at least one strategy is required"}},
		{"no strategies", strings.Split(goodFile(), "  strategies:\n")[0],
			[]string{"good.yaml: document 2", "spec.strategies: at least one strategy is required"}},
		{"target set", bench("    model: demo\n", "    model: demo\n    target: http://127.0.0.1:8080\n"),
			[]string{"document 2", "spec.workload.target: must not be set"}},
		{"bad value", bench("    groups: 32\n", "    groups: lots\n"),
			[]string{"spec.workload.groups: invalid value \"lots\""}},
		{"fractional int", bench("    groups: 32\n", "    groups: 2.5\n"),
			[]string{"spec.workload.groups: invalid value \"2.5\""}},
		{"list value", bench("    groups: 32\n", "    groups: [1, 2]\n"),
			[]string{"spec.workload.groups: must be a string, a number or a bool"}},
		{"null value", bench("    groups: 32\n", "    groups:\n"),
			[]string{"spec.workload.groups: no value"}},
		{"workload fails validation", bench("    rate: 100\n", "    rate: -1\n"),
			[]string{"document 2", "spec.workload: --rate: must be a finite number >= 0"}},
		{"model missing", bench("    model: demo\n", ""),
			[]string{"spec.workload: --model: required"}},
		{"model not in the fleet", bench("    model: demo\n", "    model: llama\n"),
			[]string{"document 2", `spec.workload.model: "llama" is not served by the fleet (its models: demo)`}},
		{"unknown field in spec", bench("  warmupTimeout: 90s\n", "  warmupTimeout: 90s\n  strategy: []\n"),
			[]string{"good.yaml: document 2 (Benchmark): spec.strategy: unknown field"}},
		{"unknown field in a plugin", bench("{name: random}", "{name: random, wieght: 2}"),
			[]string{"good.yaml: document 2 (Benchmark): spec.strategies[0].plugins[0].wieght: unknown field"}},
		{"duplicate key", bench("    groups: 32\n", "    groups: 32\n    groups: 33\n"),
			[]string{"good.yaml: document 2", "groups"}},
		{"zero activators", bench("  warmupTimeout: 90s\n", "  warmupTimeout: 90s\n  activators: 0\n"),
			[]string{"document 2", "spec.activators: must be >= 1, got 0"}},
		{"bad warmupTimeout", bench("  warmupTimeout: 90s\n", "  warmupTimeout: soon\n"),
			[]string{"document 2", `spec.warmupTimeout: "soon" is not a duration`}},
		{"numeric warmupTimeout", bench("  warmupTimeout: 90s\n", "  warmupTimeout: 90\n"),
			[]string{"document 2", "warmupTimeout"}},
		{"negative warmupTimeout", bench("  warmupTimeout: 90s\n", "  warmupTimeout: -1s\n"),
			[]string{"spec.warmupTimeout: must be > 0"}},
		{"no name", bench("metadata: {name: long-system-prompt}\n", "metadata: {}\n"),
			[]string{"metadata.name: required"}},
		{"unnamed strategy", bench("    - name: random\n", "    - name: \"\"\n"),
			[]string{"spec.strategies[0].name: required"}},
		{"duplicate strategy", bench("    - name: kv-cache-aware+least-request\n", "    - name: random\n"),
			[]string{`spec.strategies[1].name: "random" is already the name of spec.strategies[0]`}},
		{"comma in a strategy name", bench("    - name: random\n", "    - name: \"a,b\"\n"),
			[]string{"spec.strategies[0].name", "comma"}},
		{"duplicate plugin", bench("[{name: random}]", "[{name: random}, {name: random}]"),
			[]string{`spec.strategies[0] "random"`, "document 1", "spec.routing.plugins[1].name"}},
		{"unknown document", goodFile() + "---\napiVersion: v1\nkind: ConfigMap\n",
			[]string{"good.yaml: document 3: apiVersion \"v1\", kind \"ConfigMap\""}},
		{"no fleet", benchmarkDocYAML,
			[]string{"no serving.kvasir.dev/v1alpha1 ModelService documents"}},
		{"bad fleet", strings.Replace(goodFile(), "minScale: 3", "minScale: -1", 1),
			[]string{"good.yaml: document 1", "minScale"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseComparison("good.yaml", []byte(tc.file))
			require.Error(t, err)
			t.Log(err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestComparisonSelect(t *testing.T) {
	c, err := ParseComparison("good.yaml", []byte(goodFile()))
	require.NoError(t, err)
	all, err := c.Select(nil)
	require.NoError(t, err)
	assert.Equal(t, c.Strategies, all)

	// File order, whatever the order asked, each once.
	got, err := c.Select([]string{"kv-cache-aware+least-request", "random", "random"})
	require.NoError(t, err)
	assert.Equal(t, c.Strategies, got)
	got, err = c.Select([]string{"kv-cache-aware+least-request"})
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, "kv-cache-aware+least-request", got[0].Name)

	_, err = c.Select([]string{"oracle"})
	require.EqualError(t, err, `--only: no strategy "oracle" in good.yaml (it has: random, kv-cache-aware+least-request)`)
}

// The shipped files parse.
func TestShippedComparisonFiles(t *testing.T) {
	files, err := filepath.Glob("../../examples/bench/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	files = append(files, "../../test/e2e/testdata/bench-compare.yaml")
	// The tenants-*.yaml files' keys (read from the environment only).
	t.Setenv("TEAM_HEAVY_KEY", "heavy")
	t.Setenv("TEAM_LIGHT_KEY", "light")
	t.Setenv("TEAM_CRITICAL_KEY", "critical")
	t.Setenv("TEAM_SHEDDABLE_KEY", "sheddable")
	for _, f := range files {
		c, err := LoadComparison(f)
		require.NoError(t, err, f)
		assert.NotEmpty(t, c.Strategies, f)
	}
}

func TestExpectedReplicas(t *testing.T) {
	i32 := func(v int32) *int32 { return &v }
	ms := &v1alpha1.ModelService{}
	ms.Spec.Template.Scaling = v1alpha1.ScalingSpec{MinScale: i32(2), MaxScale: i32(0), InitialScale: i32(1)}
	assert.Equal(t, 2, expectedReplicas(ms, "unified"), "initialScale raised to minScale")
	ms.Spec.Template.Scaling = v1alpha1.ScalingSpec{MinScale: i32(0), MaxScale: i32(2), InitialScale: i32(5)}
	assert.Equal(t, 2, expectedReplicas(ms, "unified"), "capped at maxScale")
	ms.Spec.Template.Scaling = v1alpha1.ScalingSpec{MinScale: i32(0), MaxScale: i32(4), InitialScale: i32(0)}
	assert.Equal(t, 0, expectedReplicas(ms, "unified"), "scale from zero: nothing to wait for")
	ms.Spec.Template.Roles = &v1alpha1.RolesSpec{Decode: &v1alpha1.RoleSpec{Scaling: &v1alpha1.ScalingSpec{MinScale: i32(3)}}}
	assert.Equal(t, 3, expectedReplicas(ms, "decode"))
	assert.Equal(t, 0, expectedReplicas(ms, "prefill"), "a role without scaling has the template's")

	ready, why := fleetReady([]*v1alpha1.ModelService{{}}, nil)
	assert.False(t, ready)
	assert.Contains(t, why, "no revision listed")
}
