package bench

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// Tenant is one tenant of a multi-tenant run: a name, the environment
// variable holding its API key, and the flags of `kvasir bench run` it sets
// for itself (its load shape and workload); the others are the run's.
type Tenant struct {
	// Name names the tenant in the results.
	Name string
	// KeyFromEnv is the environment variable holding the tenant's API key,
	// sent as "Authorization: Bearer KEY"; empty: no key is sent. Keys are
	// never read from files, which may be committed.
	KeyFromEnv string
	// Settings are flag values by the flag's name without dashes (only
	// TenantSettings), applied over the run's.
	Settings map[string]string
}

// TenantSettings are the flags a tenant may set for itself; the others
// (target, endpoint, stream, timeout, duration, warmup) are the run's.
var TenantSettings = []string{
	"model", "rate", "arrival", "max-concurrency", "num-prompts", "seed",
	"workload", "input-len", "output-len", "range-ratio", "groups", "prompts-per-group",
	"system-prompt-len", "question-len", "conversations", "turns",
}

// plainKeyFields are the fields that would hold a plain key: refused.
var plainKeyFields = []string{"key", "apiKey", "api-key", "api_key"}

// ParseTenants reads a YAML list of tenants (already decoded, as from
// sigs.k8s.io/yaml); field names the list in errors ("tenants" or
// "spec.workload.tenants"). Each entry holds name, keyFromEnv and any of
// TenantSettings with a scalar value.
func ParseTenants(field string, v any) ([]Tenant, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%s: must be a list of tenants", field)
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("%s: at least one tenant is required", field)
	}
	out := make([]Tenant, 0, len(list))
	for i, e := range list {
		t, err := parseTenant(fmt.Sprintf("%s[%d]", field, i), e)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

func parseTenant(field string, e any) (Tenant, error) {
	m, ok := e.(map[string]any)
	if !ok {
		return Tenant{}, fmt.Errorf("%s: must be a mapping (name, keyFromEnv and settings)", field)
	}
	t := Tenant{Settings: map[string]string{}}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		f := field + "." + k
		switch {
		case k == "name" || k == "keyFromEnv":
			s, ok := m[k].(string)
			if !ok {
				return Tenant{}, fmt.Errorf("%s: must be a string", f)
			}
			if k == "name" {
				t.Name = s
			} else {
				t.KeyFromEnv = s
			}
		case slices.Contains(plainKeyFields, k):
			return Tenant{}, fmt.Errorf("%s: plain keys are not accepted; name the environment variable holding the key with keyFromEnv", f)
		case slices.Contains(TenantSettings, k):
			v, err := flagValue(m[k])
			if err != nil {
				return Tenant{}, fmt.Errorf("%s: %w", f, err)
			}
			t.Settings[k] = v
		default:
			return Tenant{}, fmt.Errorf("%s: unknown key (a tenant has name, keyFromEnv and these flags of kvasir bench run: %s)",
				f, strings.Join(TenantSettings, ", "))
		}
	}
	return t, nil
}

// tenantsFile is the --tenants flag: a YAML file with the list of tenants.
type tenantsFile struct{ p *[]Tenant }

func (f tenantsFile) String() string { return "" }

func (f tenantsFile) Set(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	ts, err := ParseTenants("tenants", v)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	*f.p = ts
	return nil
}

// TenantConfig returns the config of tenant i: c with the tenant's
// settings applied, no tenants and no API key (the key is read from the
// environment when the run starts). A tenant that sets no seed gets its own,
// derived from the run's and its index, so tenants draw different prompts
// and arrivals.
func (c Config) TenantConfig(i int) (Config, error) {
	t := c.Tenants[i]
	var tc Config
	fs := flag.NewFlagSet("tenant", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	tc.RegisterFlags(fs) // binds the flags to tc's fields, then tc is set
	tc = c
	tc.Tenants, tc.APIKey = nil, ""
	tc.Seed = c.tenantSeed(i)
	for _, k := range slices.Sorted(maps.Keys(t.Settings)) {
		field := fmt.Sprintf("tenants[%d].%s", i, k)
		if !slices.Contains(TenantSettings, k) {
			return Config{}, fmt.Errorf("%s: not a setting of a tenant", field)
		}
		if err := fs.Set(k, t.Settings[k]); err != nil {
			return Config{}, fmt.Errorf("%s: invalid value %q: %w", field, t.Settings[k], err)
		}
	}
	return tc, nil
}

// tenantSeed is the seed of tenant i when it sets none: derived from the
// run's seed and i.
func (c Config) tenantSeed(i int) int64 {
	return int64(newRand(c.Seed, streamTenants+uint64(i)).Uint64() >> 1)
}

// validateTenants checks the run's own settings (those tenants cannot set)
// once, then each tenant: its name, its key variable, and its config.
func (c Config) validateTenants() error {
	var errs []error
	base := c
	base.Tenants = nil
	for _, p := range base.problems() {
		if !slices.Contains(TenantSettings, p.flag) {
			errs = append(errs, p.err)
		}
	}
	seen := map[string]int{}
	for i, t := range c.Tenants {
		field := fmt.Sprintf("tenants[%d]", i)
		switch prev, dup := seen[t.Name]; {
		case strings.TrimSpace(t.Name) == "":
			errs = append(errs, fmt.Errorf("%s.name: required", field))
		case dup:
			errs = append(errs, fmt.Errorf("%s.name: %q is already the name of tenants[%d]", field, t.Name, prev))
		default:
			seen[t.Name] = i
		}
		if t.KeyFromEnv != "" && os.Getenv(t.KeyFromEnv) == "" {
			errs = append(errs, fmt.Errorf("%s.keyFromEnv: environment variable %s is not set or empty (keys are read from the environment only)",
				field, t.KeyFromEnv))
		}
		tc, err := c.TenantConfig(i)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, p := range tc.problems() {
			if slices.Contains(TenantSettings, p.flag) {
				errs = append(errs, fmt.Errorf("%s (%s): %w", field, t.Name, p.err))
			}
		}
	}
	return errors.Join(errs...)
}

// tenantKey returns the API key of t from the environment ("" without
// KeyFromEnv).
func tenantKey(t Tenant) string {
	if t.KeyFromEnv == "" {
		return ""
	}
	return os.Getenv(t.KeyFromEnv)
}
