package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/kvasir-serving/kvasir/pkg/local"
)

// tenantsOf parses a YAML list of tenants.
func tenantsOf(t *testing.T, doc string) []Tenant {
	t.Helper()
	var v any
	require.NoError(t, yaml.Unmarshal([]byte(doc), &v))
	ts, err := ParseTenants("tenants", v)
	require.NoError(t, err)
	return ts
}

func TestRunTenantsKeysCountsAndShares(t *testing.T) {
	t.Setenv("BENCH_HEAVY_KEY", "heavy-key")
	t.Setenv("BENCH_LIGHT_KEY", "light-key")
	f := newFake(t, nil)
	cfg := testConfig(f)
	cfg.Tenants = tenantsOf(t, `
- {name: heavy, keyFromEnv: BENCH_HEAVY_KEY, rate: 800, num-prompts: 16}
- {name: light, keyFromEnv: BENCH_LIGHT_KEY, rate: 100, num-prompts: 4, output-len: 3}
- {name: anonymous, num-prompts: 2, max-concurrency: 1}
`)
	res, err := Run(context.Background(), cfg)
	requireNoErr(t, res, err)

	byAuth := map[string][]recorded{}
	for _, r := range f.requests() {
		byAuth[r.auth] = append(byAuth[r.auth], r)
	}
	require.Len(t, byAuth["Bearer heavy-key"], 16)
	require.Len(t, byAuth["Bearer light-key"], 4)
	require.Len(t, byAuth[""], 2, "a tenant without keyFromEnv sends no key")
	for _, r := range byAuth["Bearer light-key"] {
		assert.Equal(t, 3, r.req.MaxTokens, "the tenant's own output length")
	}
	assert.NotEqual(t, byAuth["Bearer heavy-key"][0].req.Messages[0].Content, byAuth["Bearer light-key"][0].req.Messages[0].Content,
		"each tenant draws its prompts from its own seed")

	require.Len(t, res.Tenants, 3)
	heavy, light, anon := res.Tenants[0], res.Tenants[1], res.Tenants[2]
	for _, tc := range []struct {
		tr        TenantResult
		name      string
		completed int
		served    int64
		rate      float64
	}{
		{heavy, "heavy", 16, 16 * (fakePrompt + 5), 800},
		{light, "light", 4, 4 * (fakePrompt + 3), 100},
		{anon, "anonymous", 2, 2 * (fakePrompt + 5), 0},
	} {
		assert.Equal(t, tc.name, tc.tr.Name)
		assert.Equal(t, tc.completed, tc.tr.Completed, tc.name)
		assert.Zero(t, tc.tr.Errors, tc.name)
		assert.Equal(t, tc.served, tc.tr.TokensServed, tc.name)
		assert.InDelta(t, float64(tc.served)/float64(16*105+4*103+2*105), tc.tr.TokensServedShare, 1e-12, tc.name)
		assert.Equal(t, tc.rate, tc.tr.Rate, tc.name)
		assert.InDelta(t, float64(tc.completed)/tc.tr.DurationS, tc.tr.ThroughputRPS, 1e-9, tc.name)
		assert.Positive(t, tc.tr.TTFTP50S, tc.name)
		assert.LessOrEqual(t, tc.tr.TTFTP50S, tc.tr.TTFTP99S, tc.name)
	}
	assert.Equal(t, "BENCH_HEAVY_KEY", heavy.KeyFromEnv)
	assert.Equal(t, 22, res.Completed, "the run's figures are all tenants' requests")
	assert.Equal(t, 22, res.NumPrompts)
	assert.Equal(t, 900.0, res.Rate)

	var buf bytes.Buffer
	require.NoError(t, res.WriteJSON(&buf))
	assert.NotContains(t, buf.String(), "heavy-key", "keys never reach the output")
	var out struct {
		Tenants []map[string]any `json:"tenants"`
	}
	require.NoError(t, json.Unmarshal(buf.Bytes(), &out))
	require.Len(t, out.Tenants, 3)
	assert.Equal(t, "light", out.Tenants[1]["name"])
	for _, k := range []string{"completed", "errors_by_code", "tokens_served", "tokens_served_share", "ttft_p90_s", "e2e_p99_s", "throughput_rps"} {
		assert.Contains(t, out.Tenants[1], k)
	}
	var table bytes.Buffer
	res.WriteTable(&table)
	assert.Contains(t, table.String(), " Tenants ")
	assert.Contains(t, table.String(), "share")
	assert.Regexp(t, `light +4 +0 `, table.String())
}

func TestRunTenantsCountsRefusalsAndRateLimitHeaders(t *testing.T) {
	t.Setenv("BENCH_LIMITED_KEY", "limited")
	f := newFake(t, func(f *fakeServer) {
		f.answer = func(auth string) (int, http.Header) {
			h := http.Header{}
			switch auth {
			case "Bearer limited":
				h.Set("Retry-After", "2")
				h.Set("x-ratelimit-limit-requests", "10")
				h.Set("x-ratelimit-remaining-requests", "0")
				return http.StatusTooManyRequests, h
			case "":
				return http.StatusUnauthorized, nil
			}
			return 0, nil
		}
	})
	cfg := testConfig(f)
	cfg.Tenants = tenantsOf(t, `
- {name: limited, keyFromEnv: BENCH_LIMITED_KEY, num-prompts: 5}
- {name: nokey, num-prompts: 3}
`)
	res, err := Run(context.Background(), cfg)
	requireNoErr(t, res, err)
	limited, nokey := res.Tenants[0], res.Tenants[1]
	assert.Equal(t, map[string]int{"429": 5}, limited.ErrorsByCode)
	assert.Equal(t, 5, limited.ErrorCount(429))
	assert.Equal(t, 5, limited.RetryAfterCount)
	assert.Equal(t, 2.0, limited.RetryAfterMaxS)
	assert.Equal(t, map[string]int{"x-ratelimit-limit-requests": 5, "x-ratelimit-remaining-requests": 5}, limited.RateLimitHeaders)
	assert.Zero(t, limited.TokensServed)
	assert.Equal(t, map[string]int{"401": 3}, nokey.ErrorsByCode)
	assert.Zero(t, nokey.RetryAfterCount)
	assert.Empty(t, nokey.RateLimitHeaders)
	assert.Equal(t, 8, res.Errors)

	var table bytes.Buffer
	res.WriteTable(&table)
	assert.Contains(t, table.String(), "limited: 5 × 429, Retry-After on 5 answers (max 2.0 s), x-ratelimit-* headers on 5 answers")
}

func TestTenantValidation(t *testing.T) {
	t.Setenv("BENCH_SET_KEY", "k")
	for _, tc := range []struct {
		name    string
		tenants string
		mutate  func(*Config)
		want    []string
	}{
		{"key variable unset", `[{name: a, keyFromEnv: BENCH_SET_KEY}, {name: b, keyFromEnv: BENCH_UNSET_KEY}]`, nil,
			[]string{"tenants[1].keyFromEnv: environment variable BENCH_UNSET_KEY is not set"}},
		{"no name", `[{keyFromEnv: BENCH_SET_KEY}]`, nil, []string{"tenants[0].name: required"}},
		{"same name", `[{name: a}, {name: a}]`, nil, []string{`tenants[1].name: "a" is already the name of tenants[0]`}},
		{"bad tenant setting", `[{name: a, rate: -1}]`, nil, []string{"tenants[0] (a): --rate: must be a finite number >= 0"}},
		{"bad value", `[{name: a, num-prompts: many}]`, nil, []string{`tenants[0].num-prompts: invalid value "many"`}},
		{"closed loop without a cap", `[{name: a, rate: 0, max-concurrency: 0}]`, nil, []string{"tenants[0] (a): --max-concurrency:"}},
		{"run setting checked once", `[{name: a}, {name: b}]`, func(c *Config) { c.Target = "" }, []string{"--target: required"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, nil)
			cfg := testConfig(f)
			cfg.Tenants = tenantsOf(t, tc.tenants)
			if tc.mutate != nil {
				tc.mutate(&cfg)
			}
			res, err := Run(context.Background(), cfg)
			require.Error(t, err)
			assert.Nil(t, res)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.Empty(t, f.requests(), "nothing is sent")
		})
	}
	ok := DefaultConfig()
	ok.Target, ok.Model = "http://127.0.0.1:1", "m"
	ok.Tenants = tenantsOf(t, `[{name: a, rate: 5}, {name: b, max-concurrency: 2}]`)
	require.NoError(t, ok.Validate(), "the run's closed loop without a cap is no error when every tenant has a load shape")
}

func TestParseTenantsRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"plain key", `[{name: a, key: sk-123}]`, "tenants[0].key: plain keys are not accepted"},
		{"plain apiKey", `[{name: a, apiKey: sk-123}]`, "tenants[0].apiKey: plain keys are not accepted"},
		{"run-level flag", `[{name: a, target: "http://x"}]`, "tenants[0].target: unknown key"},
		{"not a list", `{name: a}`, "tenants: must be a list"},
		{"empty", `[]`, "tenants: at least one tenant"},
		{"not a mapping", `[a]`, "tenants[0]: must be a mapping"},
		{"name not a string", `[{name: [a]}]`, "tenants[0].name: must be a string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v any
			require.NoError(t, yaml.Unmarshal([]byte(tc.doc), &v))
			_, err := ParseTenants("tenants", v)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), "sk-123", "a key is never echoed")
		})
	}
}

func TestTenantsFlag(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tenants.yaml")
	require.NoError(t, os.WriteFile(file, []byte("- {name: a, rate: 8, input-len: 64}\n- {name: b, rate: 1}\n"), 0o600))
	c, err := parse(t, "--tenants", file, "--seed", "7")
	require.NoError(t, err)
	require.Len(t, c.Tenants, 2)
	assert.Equal(t, Tenant{Name: "a", Settings: map[string]string{"rate": "8", "input-len": "64"}}, c.Tenants[0])
	a, err := c.TenantConfig(0)
	require.NoError(t, err)
	assert.Equal(t, 8.0, a.Rate)
	assert.Equal(t, 64, a.InputLen)
	b, err := c.TenantConfig(1)
	require.NoError(t, err)
	assert.Equal(t, c.InputLen, b.InputLen, "unset settings are the run's")
	assert.NotEqual(t, a.Seed, b.Seed, "each tenant has its own seed")
	assert.Nil(t, a.Tenants)

	require.NoError(t, os.WriteFile(file, []byte("- {name: a, key: sk-1}\n"), 0o600))
	_, err = parse(t, "--tenants", file)
	assert.ErrorContains(t, err, "tenants[0].key: plain keys are not accepted")
}

func TestNoTenantsLeavesOutputUnchanged(t *testing.T) {
	f := newFake(t, nil)
	res, err := Run(context.Background(), testConfig(f))
	requireNoErr(t, res, err)
	var buf bytes.Buffer
	require.NoError(t, res.WriteJSON(&buf))
	assert.NotContains(t, buf.String(), "tenants")
	var table bytes.Buffer
	res.WriteTable(&table)
	assert.NotContains(t, table.String(), "Tenants")
}

func TestParseComparisonWithTenants(t *testing.T) {
	t.Setenv("BENCH_A_KEY", "a")
	tenantDoc := `apiVersion: serving.kvasir.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec:
  apiKeys: [{fromEnv: BENCH_A_KEY}]
`
	bench := `apiVersion: bench.kvasir.dev/v1alpha1
kind: Benchmark
metadata: {name: fair}
spec:
  workload:
    model: demo
    rate: 4
    tenants:
      - {name: a, keyFromEnv: BENCH_A_KEY, rate: 8}
      - {name: b, keyFromEnv: %s, rate: 1, model: %s}
  strategies: [{name: fcfs}]
`
	file := func(keyVar, model string) []byte {
		return []byte(fleetDoc + "---\n" + tenantDoc + "---\n" + fmt.Sprintf(bench, keyVar, model))
	}
	c, err := ParseComparison("fair.yaml", file("BENCH_A_KEY", "demo"))
	require.NoError(t, err)
	require.Len(t, c.Config.Tenants, 2)
	assert.Equal(t, "8", c.Config.Tenants[0].Settings["rate"])
	fleet, err := c.FleetYAML(c.Strategies[0])
	require.NoError(t, err)
	tenants, err := local.LoadTenants("fleet.yaml", fleet)
	require.NoError(t, err)
	require.Len(t, tenants, 1, "the Tenant documents go to every strategy's fleet")
	assert.Equal(t, "team-a", tenants[0].Name)
	assert.Len(t, local.SplitDocuments(fleet), 3, "document numbers are kept")

	_, err = ParseComparison("fair.yaml", file("BENCH_B_UNSET", "demo"))
	require.ErrorContains(t, err, "spec.workload: tenants[1].keyFromEnv: environment variable BENCH_B_UNSET is not set")
	_, err = ParseComparison("fair.yaml", file("BENCH_A_KEY", "other"))
	require.ErrorContains(t, err, `spec.workload.tenants[1].model: "other" is not served by the fleet`)
	_, err = ParseComparison("fair.yaml", []byte(strings.Replace(string(file("BENCH_A_KEY", "demo")), "rate: 8", "rate: 8, key: sk-9", 1)))
	require.ErrorContains(t, err, "spec.workload.tenants[0].key: plain keys are not accepted")
}

func TestCompareTableHasTenantRows(t *testing.T) {
	rep := &Report{Benchmark: "fair", Results: []StrategyResult{{
		Strategy: Strategy{Name: "fcfs"},
		Result: &Result{Completed: 9, Tenants: []TenantResult{
			{Name: "heavy", Result: &Result{Completed: 8}, TokensServed: 800, TokensServedShare: 0.8, ErrorsByCode: map[string]int{"429": 2}},
			{Name: "light", Result: &Result{Completed: 1}, TokensServed: 200, TokensServedShare: 0.2, ErrorsByCode: map[string]int{}},
		}},
	}}}
	var buf bytes.Buffer
	rep.WriteTable(&buf)
	assert.Regexp(t, `fcfs +heavy +8 +0 +0 +0 +2 +0 +0\.00 +0\.0 +800 +0\.800 `, buf.String())
	assert.Regexp(t, `fcfs +light +1 .* 0\.200 `, buf.String())
	var js bytes.Buffer
	require.NoError(t, rep.WriteJSON(&js))
	assert.Contains(t, js.String(), `"tokens_served_share": 0.2`)
}
