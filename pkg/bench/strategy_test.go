package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/local"
)

// strategyFile is a compare file with two tenants and strategies that use
// args and tenants; %s is the strategies' list.
const strategyFile = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  model: demo
  template:
    engine: {type: sim}
    scaling: {minScale: 1, maxScale: 1, initialScale: 1}
---
apiVersion: bench.kvasir.dev/v1alpha1
kind: Benchmark
metadata: {name: fair}
spec:
  workload:
    model: demo
    input-len: 8
    output-len: 5
    rate: 0
    max-concurrency: 2
    timeout: 10s
    seed: 7
    tenants:
      - {name: heavy, keyFromEnv: BENCH_HEAVY_KEY, num-prompts: 6}
      - {name: light, keyFromEnv: BENCH_LIGHT_KEY, num-prompts: 3}
      - {name: pinned, keyFromEnv: BENCH_LIGHT_KEY, num-prompts: 2, seed: 99}
  strategies:
%s`

const goodStrategies = `    - {name: fcfs, args: [--fair-queueing=false, --require-auth]}
    - {name: fair}
    - {name: light-alone, tenants: [light]}
    - {name: pinned-and-light, tenants: [pinned, light]}
`

func strategyKeys(t *testing.T) {
	t.Setenv("BENCH_HEAVY_KEY", "heavy-key")
	t.Setenv("BENCH_LIGHT_KEY", "light-key")
}

func TestStrategyArgsAndTenants(t *testing.T) {
	strategyKeys(t)
	c, err := ParseComparison("fair.yaml", fmt.Appendf(nil, strategyFile, goodStrategies))
	require.NoError(t, err)
	require.Len(t, c.Strategies, 4)
	assert.Equal(t, []string{"--fair-queueing=false", "--require-auth"}, c.Strategies[0].Args)
	assert.Nil(t, c.Strategies[0].Tenants)
	assert.Equal(t, []string{"light"}, c.Strategies[2].Tenants)

	// All tenants unless the strategy names some.
	assert.Equal(t, c.Config, c.StrategyConfig(c.Strategies[1]))
	alone := c.StrategyConfig(c.Strategies[2])
	require.Len(t, alone.Tenants, 1)
	assert.Equal(t, "light", alone.Tenants[0].Name)
	full, err := c.Config.TenantConfig(1)
	require.NoError(t, err)
	got, err := alone.TenantConfig(0)
	require.NoError(t, err)
	assert.Equal(t, full.Seed, got.Seed, "light alone sends what it sends beside heavy")
	assert.Equal(t, full, got)
	_, had := c.Config.Tenants[1].Settings["seed"]
	assert.False(t, had, "the comparison's own tenants are not changed")

	// In the workload's order; a tenant's own seed is kept.
	two := c.StrategyConfig(c.Strategies[3])
	require.Len(t, two.Tenants, 2)
	assert.Equal(t, "light", two.Tenants[0].Name)
	assert.Equal(t, "pinned", two.Tenants[1].Name)
	pinned, err := two.TenantConfig(1)
	require.NoError(t, err)
	assert.Equal(t, int64(99), pinned.Seed)

	// The fleet file says how to run it by hand.
	fleet, err := c.FleetYAML(c.Strategies[0])
	require.NoError(t, err)
	assert.Contains(t, string(fleet), "# Run with these flags of kvasir local: --fair-queueing=false --require-auth\n")
	_, err = local.Load("fleet.yaml", fleet)
	require.NoError(t, err)
}

func TestStrategyArgsAndTenantsErrors(t *testing.T) {
	strategyKeys(t)
	cases := []struct {
		name       string
		strategies string
		want       string
	}{
		{"no dashes", `    - {name: a, args: [fair-queueing=false]}`,
			`spec.strategies[0].args[0]: "fair-queueing=false": must start with --`},
		{"one dash", `    - {name: a, args: [-fair-queueing=false]}`, "args[0]: \"-fair-queueing=false\": must start with --"},
		{"bare --", `    - {name: a, args: ["--"]}`, `args[0]: "--": no flag name after --`},
		{"three dashes", `    - {name: a, args: ["---x"]}`, "no flag name after --"},
		{"empty name", `    - {name: a, args: ["--=1"]}`, "no flag name after --"},
		{"a value as its own arg", `    - {name: b}
    - {name: a, args: [--saturation-waiting, "4"]}`, `spec.strategies[1].args[1]: "4": must start with --`},
		{"space in a name", `    - {name: a, args: ["--fair queueing"]}`, `flag name "fair queueing"`},
		{"control character", `    - {name: a, args: ["--x=a\nb"]}`, "control character at byte 5"},
		{"the file", `    - {name: a, args: [--f=other.yaml]}`, "--f is set by kvasir bench compare"},
		{"the address", `    - {name: a, args: ["--addr=0.0.0.0:80"]}`, "--addr is set by kvasir bench compare"},
		{"activators", `    - {name: a, args: [--activators=3]}`, `"--activators=3": set spec.activators instead`},
		{"help", `    - {name: a, args: [--help]}`, "--help is set by kvasir bench compare"},
		{"twice", `    - {name: a, args: [--x=1, --y, --x=2]}`, "spec.strategies[0].args[2]: --x is already set by spec.strategies[0].args[0]"},
		{"too many", `    - {name: a, args: [` + strings.Repeat("--x,", 65) + `--y]}`, "args: 66 flags: at most 64"},
		{"too long", `    - {name: a, args: [--x=` + strings.Repeat("v", 2000) + `]}`, "args[0]: 2004 bytes: at most 1024"},
		{"not a list", `    - {name: a, args: --x}`, "args"},
		{"a number", `    - {name: a, args: [1]}`, "args"},
		{"unknown tenant", `    - {name: a, tenants: [medium]}`,
			`spec.strategies[0].tenants[0]: "medium" is not one of spec.workload.tenants (heavy, light, pinned)`},
		{"tenant twice", `    - {name: a, tenants: [light, heavy, light]}`, `spec.strategies[0].tenants[2]: "light" is already spec.strategies[0].tenants[0]`},
		{"no tenants listed", `    - {name: a, tenants: []}`, "spec.strategies[0].tenants: at least one tenant's name"},
		{"tenants not a list", `    - {name: a, tenants: light}`, "tenants"},
		{"unknown strategy field", `    - {name: a, tenant: [light]}`, "spec.strategies[0].tenant: unknown field"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseComparison("fair.yaml", fmt.Appendf(nil, strategyFile, tc.strategies+"\n"))
			require.Error(t, err)
			t.Log(err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), "fair.yaml: document 2")
		})
	}

	// Tenants in a strategy need tenants in the workload.
	_, err := ParseComparison("good.yaml", []byte(strings.Replace(goodFile(), "    - name: random\n", "    - name: random\n      tenants: [a]\n", 1)))
	require.ErrorContains(t, err, "spec.strategies[0].tenants: spec.workload has no tenants to choose from")
}

// testLocalFlags binds a few flags of kvasir local, as pkg/cli would: one
// (--accel) is parsed into a variable, checked and copied once parsed.
func testLocalFlags(fs *flag.FlagSet, o *local.Options) func() error {
	fs.BoolVar(&o.RequireAuth, "require-auth", false, "")
	fs.DurationVar(&o.ScaleInterval, "scale-interval", 0, "")
	fs.IntVar(&o.Activators, "activators", 1, "")
	fs.IntVar(&o.Activator.MaxBuffered, "max-buffered", o.Activator.MaxBuffered, "")
	accel := fs.String("accel", "", "")
	return func() error {
		if *accel == "bad" {
			return errors.New("--accel: bad")
		}
		o.Accelerators = *accel
		return nil
	}
}

func TestLocalFleetsParseArgs(t *testing.T) {
	l := LocalLauncher(nil, 2, nil).WithFlags(testLocalFlags)
	var opts local.Options
	require.NoError(t, l.parseArgs([]string{"--require-auth", "--scale-interval=2s", "--max-buffered=7", "--accel=gpu=1"}, &opts))
	assert.True(t, opts.RequireAuth)
	assert.Equal(t, "gpu=1", opts.Accelerators, "copied once parsed")
	assert.Equal(t, 2*time.Second, opts.ScaleInterval)
	assert.Equal(t, 7, opts.Activator.MaxBuffered)
	opts = local.Options{RequireAuth: true}
	require.NoError(t, l.parseArgs(nil, &opts))
	assert.False(t, opts.RequireAuth, "no args: the flags' defaults are bound all the same, as for a strategy with args")

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"--fair-queueing=false"}, `args[0]: "--fair-queueing=false": kvasir local has no flag --fair-queueing`},
		{"a value flag without a value", []string{"--scale-interval", "--require-auth"},
			`args[0]: "--scale-interval": --scale-interval takes a value: write --scale-interval=VALUE`},
		{"a bad value", []string{"--scale-interval=soon"}, "args --scale-interval=soon: invalid value"},
		{"a bad bool", []string{"--require-auth=maybe"}, "invalid boolean value"},
		{"reserved, though bound", []string{"--activators=5"}, "set spec.activators instead"},
		{"not a flag", []string{"x"}, `must start with --`},
		{"refused once parsed", []string{"--accel=bad"}, "args --accel=bad: --accel: bad"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var opts local.Options
			err := l.parseArgs(tc.args, &opts)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Error(t, l.CheckArgs(tc.args))
		})
	}

	bare := LocalLauncher(nil, 1, nil)
	assert.NoError(t, bare.CheckArgs(nil))
	assert.ErrorContains(t, bare.CheckArgs([]string{"--require-auth"}), "this launcher cannot apply flags of kvasir local")
}

// checkingFleets is fakeFleets that also checks args before anything runs.
type checkingFleets struct {
	*fakeFleets
	bad string // the arg it refuses
}

func (cf checkingFleets) CheckArgs(args []string) error {
	for _, a := range args {
		if a == cf.bad {
			return fmt.Errorf("no flag %s", a)
		}
	}
	return nil
}

func TestCompareStrategyArgsAndTenants(t *testing.T) {
	strategyKeys(t)
	c, err := ParseComparison("fair.yaml", fmt.Appendf(nil, strategyFile, `    - {name: both, args: [--fair-queueing=false]}
    - {name: light-alone, tenants: [light]}
`))
	require.NoError(t, err)
	ff := &fakeFleets{}
	dir := t.TempDir()
	rep, err := Compare(context.Background(), c, c.Strategies, CompareOptions{
		Launch: checkingFleets{fakeFleets: ff, bad: "--nope"}, Dir: dir, PollInterval: 10 * time.Millisecond,
	})
	require.NoError(t, err)
	require.Empty(t, rep.Failed())
	assert.Equal(t, [][]string{{"--fair-queueing=false"}, nil}, ff.args, "each fleet gets its strategy's args")
	assert.Equal(t, map[string]int{"Bearer heavy-key": 6, "Bearer light-key": 3 + 2 + 3}, ff.keys,
		"light-alone sends light's requests only")

	both, alone := rep.Results[0].Result, rep.Results[1].Result
	require.Len(t, both.Tenants, 3)
	require.NotNil(t, both.AllBackloggedS, "two tenants or more: the time all were backlogged is known")
	require.Len(t, alone.Tenants, 1)
	assert.Equal(t, "light", alone.Tenants[0].Name)
	assert.Equal(t, 3, alone.Tenants[0].Completed)
	assert.Nil(t, alone.AllBackloggedS, "one tenant: no contention to measure")
	assert.Nil(t, alone.Tenants[0].BackloggedShare)

	var js bytes.Buffer
	require.NoError(t, rep.WriteJSON(&js))
	var out struct {
		Results []map[string]any `json:"results"`
	}
	require.NoError(t, json.Unmarshal(js.Bytes(), &out))
	assert.Equal(t, []any{"--fair-queueing=false"}, out.Results[0]["args"])
	assert.NotContains(t, out.Results[0], "strategy_tenants")
	assert.Equal(t, []any{"light"}, out.Results[1]["strategy_tenants"])
	assert.NotContains(t, out.Results[1], "args")
	assert.Contains(t, out.Results[0], "all_backlogged_s")
	assert.NotContains(t, out.Results[1], "all_backlogged_s")
	var table bytes.Buffer
	rep.WriteTable(&table)
	assert.Contains(t, table.String(), "backlogged_share")
	assert.Regexp(t, `light-alone +light +3 +0 .* - +- `, table.String())

	b, err := os.ReadFile(filepath.Join(dir, "01-both", "fleet.yaml"))
	require.NoError(t, err)
	assert.Contains(t, string(b), "--fair-queueing=false")

	// Args the launcher refuses fail the comparison before any fleet runs.
	c.Strategies[1].Args = []string{"--nope"}
	ff = &fakeFleets{}
	_, err = Compare(context.Background(), c, c.Strategies, CompareOptions{
		Launch: checkingFleets{fakeFleets: ff, bad: "--nope"}, Dir: t.TempDir(), PollInterval: 10 * time.Millisecond,
	})
	require.ErrorContains(t, err, `strategy "light-alone": no flag --nope`)
	assert.Empty(t, ff.files, "nothing ran")
}

func TestCompareTableBacklogged(t *testing.T) {
	half, secs := 0.5, 42.25
	rep := &Report{Benchmark: "fair", Results: []StrategyResult{{
		Strategy: Strategy{Name: "fair"},
		Result: &Result{Completed: 9, AllBackloggedS: &secs, Tenants: []TenantResult{
			{Name: "heavy", Result: &Result{Completed: 8}, TokensServed: 800, TokensServedShare: 0.8, BackloggedShare: &half},
			{Name: "light", Result: &Result{Completed: 1}, TokensServed: 200, TokensServedShare: 0.2, BackloggedShare: &half},
		}},
	}}}
	var buf bytes.Buffer
	rep.WriteTable(&buf)
	assert.Regexp(t, `fair +heavy +8 .* 800 +0\.800 +0\.500 +42\.2 `, buf.String())
	var js bytes.Buffer
	require.NoError(t, rep.WriteJSON(&js))
	assert.Contains(t, js.String(), `"backlogged_share": 0.5`)
	assert.Contains(t, js.String(), `"all_backlogged_s": 42.25`)

	var run bytes.Buffer
	rep.Results[0].Result.WriteTable(&run)
	assert.Contains(t, run.String(), "every tenant backlogged for 42.2 s")
	assert.Regexp(t, `heavy .* 80\.0% +50\.0% `, run.String())
}
