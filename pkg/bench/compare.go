package bench

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"sigs.k8s.io/yaml"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/local"
)

// The Benchmark document of a `kvasir bench compare` file.
const (
	BenchmarkGroup      = "bench.kvasir.dev"
	BenchmarkVersion    = "v1alpha1"
	BenchmarkAPIVersion = BenchmarkGroup + "/" + BenchmarkVersion
	BenchmarkKind       = "Benchmark"
)

// DefaultWarmupTimeout is how long compare waits for a fleet's replicas to be
// ready when the file does not say.
const DefaultWarmupTimeout = 2 * time.Minute

// Strategy is one routing plugin set, applied as spec.routing of every
// ModelService of the fleet. No plugins means the platform's default routing.
// Engine, when set, replaces those fields of spec.template.engine in every
// ModelService (for example kvEvents or tokenizer: approximate against
// precise prefix routing).
type Strategy struct {
	Name    string                   `json:"name"`
	Plugins []v1alpha1.RoutingPlugin `json:"plugins,omitempty"`
	Engine  map[string]any           `json:"engine,omitempty"`
	// Args are extra flags of `kvasir local` for this strategy's fleet
	// (for example --fair-queueing=false), passed verbatim to it: each is
	// one --name or --name=value (a value always after "="). The flags
	// compare sets itself (CompareReservedFlags) are refused.
	Args []string `json:"args,omitempty"`
	// Tenants, when set, runs only these of spec.workload.tenants (by
	// name), each with the arrivals and prompts it has in the full run: for
	// example a light tenant alone at its own rate, beside the contended
	// run.
	Tenants []string `json:"tenants,omitempty"`
}

// CompareReservedFlags are the flags of `kvasir local` that compare sets for
// every fleet (its file, addresses, log directory and spec.activators) and
// that a strategy's args may therefore not set; "help" and "h" would only
// print the usage.
var CompareReservedFlags = []string{"f", "addr", "admin-addr", "log-dir", "activators", "help", "h"}

// maxStrategyArgs and maxStrategyArgLen bound a strategy's args.
const (
	maxStrategyArgs   = 64
	maxStrategyArgLen = 1024
)

// checkArgs checks the shape of a strategy's args (field names them in
// errors): each one --name or --name=value, the name of a flag's letters,
// digits and "-._", not one of CompareReservedFlags, and no name twice.
func checkArgs(field string, args []string) error {
	if len(args) > maxStrategyArgs {
		return fmt.Errorf("%s: %d flags: at most %d", field, len(args), maxStrategyArgs)
	}
	seen := map[string]int{}
	for i, a := range args {
		f := fmt.Sprintf("%s[%d]", field, i)
		name, err := argName(a)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		if prev, dup := seen[name]; dup {
			return fmt.Errorf("%s: --%s is already set by %s[%d]", f, name, field, prev)
		}
		seen[name] = i
	}
	return nil
}

// argName returns the flag name of one strategy arg, or why it is not one.
func argName(a string) (string, error) {
	if len(a) > maxStrategyArgLen {
		return "", fmt.Errorf("%d bytes: at most %d", len(a), maxStrategyArgLen)
	}
	if i := strings.IndexFunc(a, unicode.IsControl); i >= 0 {
		return "", fmt.Errorf("%q: control character at byte %d", a, i)
	}
	rest, ok := strings.CutPrefix(a, "--")
	if !ok {
		return "", fmt.Errorf("%q: must start with -- (a flag of kvasir local, such as --fair-queueing=false)", a)
	}
	name, _, _ := strings.Cut(rest, "=")
	if name == "" || strings.HasPrefix(name, "-") {
		return "", fmt.Errorf("%q: no flag name after --", a)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
			return "", fmt.Errorf("%q: flag name %q: only letters, digits, '-', '.' and '_'", a, name)
		}
	}
	switch {
	case name == "activators":
		return "", fmt.Errorf("%q: set spec.activators instead (it applies to every strategy)", a)
	case slices.Contains(CompareReservedFlags, name):
		return "", fmt.Errorf("%q: --%s is set by kvasir bench compare for every fleet", a, name)
	}
	return name, nil
}

// Comparison is a parsed `kvasir bench compare` file: a fleet of
// ModelServices, one workload and the strategies to run it under.
type Comparison struct {
	// Source names the file in errors and generated fleets.
	Source string
	// Name is the Benchmark's metadata.name.
	Name string
	// WarmupTimeout bounds the wait for a fleet's replicas to be ready.
	WarmupTimeout time.Duration
	// Activators is how many activator replicas each fleet runs (default
	// 1); the load is spread over them.
	Activators int
	// Config is the workload, validated; Target is left empty (each
	// strategy's fleet gets its own address).
	Config Config
	// Strategies in file order.
	Strategies []Strategy
	// Fleet is the ModelServices as `kvasir local` reads them (defaulted).
	Fleet []*v1alpha1.ModelService

	// docs are the file's documents; fleetDocs the indices of the
	// ModelService documents among them, decoded generically so that a
	// strategy's fleet is the user's documents with only spec.routing
	// changed.
	docs      []string
	fleetDocs map[int]map[string]any
	// tenantDocs are the Tenant documents, copied to every strategy's
	// fleet as they are.
	tenantDocs map[int]string
}

// benchmarkDoc is the wire form of the Benchmark document.
type benchmarkDoc struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Labels      map[string]string `json:"labels,omitempty"`
		Annotations map[string]string `json:"annotations,omitempty"`
	} `json:"metadata"`
	Spec struct {
		WarmupTimeout *string        `json:"warmupTimeout,omitempty"`
		Activators    *int           `json:"activators,omitempty"`
		Workload      map[string]any `json:"workload"`
		Strategies    []Strategy     `json:"strategies"`
	} `json:"spec"`
}

// LoadComparison reads and parses a compare file.
func LoadComparison(path string) (*Comparison, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return ParseComparison(path, data)
}

// ParseComparison parses a compare file read from source (a name for
// errors): ModelService documents, read as `kvasir local -f` reads them, and
// exactly one Benchmark document. Every error names the document and the
// field at fault.
func ParseComparison(source string, data []byte) (*Comparison, error) {
	c := &Comparison{Source: source, fleetDocs: map[int]map[string]any{}, tenantDocs: map[int]string{}}
	// Split exactly as `kvasir local` does, so document numbers agree
	// between its errors and ours.
	c.docs = local.SplitDocuments(data)
	benchDoc := 0 // 1-based
	for i, doc := range c.docs {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		where := fmt.Sprintf("%s: document %d", source, i+1)
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		switch {
		case head.APIVersion == BenchmarkAPIVersion && head.Kind == BenchmarkKind:
			if benchDoc != 0 {
				return nil, fmt.Errorf("%s: a second %s document (the first is document %d); a file holds exactly one", where, BenchmarkKind, benchDoc)
			}
			benchDoc = i + 1
			if err := c.parseBenchmark(where, doc); err != nil {
				return nil, err
			}
		case head.APIVersion == v1alpha1.GroupName+"/"+v1alpha1.Version && head.Kind == v1alpha1.KindTenant:
			c.tenantDocs[i] = doc // checked by local.LoadTenants below
		case head.APIVersion == v1alpha1.GroupName+"/"+v1alpha1.Version && head.Kind == v1alpha1.KindModelService:
			var m map[string]any
			if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			c.fleetDocs[i] = m
		default:
			return nil, fmt.Errorf("%s: apiVersion %q, kind %q: want %s/%s %s or %s, or %s %s", where, head.APIVersion, head.Kind,
				v1alpha1.GroupName, v1alpha1.Version, v1alpha1.KindModelService, v1alpha1.KindTenant, BenchmarkAPIVersion, BenchmarkKind)
		}
	}
	if benchDoc == 0 {
		return nil, fmt.Errorf("%s: no %s document (apiVersion: %s)", source, BenchmarkKind, BenchmarkAPIVersion)
	}
	// The fleet exactly as `kvasir local -f` reads it; it skips the
	// Benchmark document, so its document numbers are ours.
	fleet, err := local.Load(source, data)
	if err != nil {
		return nil, err
	}
	c.Fleet = fleet
	if _, err := local.LoadTenants(source, data); err != nil {
		return nil, err
	}
	if err := c.checkModel(benchDoc); err != nil {
		return nil, err
	}
	// Every strategy's fleet must load too (the routing spec's shape is
	// checked there), before anything runs.
	for i, s := range c.Strategies {
		b, err := c.FleetYAML(s)
		if err != nil {
			return nil, err
		}
		if _, err := local.Load(fmt.Sprintf("%s (spec.strategies[%d] %q)", source, i, s.Name), b); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// benchmarkFields returns the shape of the Benchmark document: the fields of
// each mapping; nil for values of any shape (spec.workload is checked key by
// key against the flags). A slice's elements have the shape under "[]".
func benchmarkFields() fieldSet {
	return fieldSet{
		"apiVersion": nil,
		"kind":       nil,
		"metadata":   fieldSet{"name": nil, "labels": nil, "annotations": nil},
		"spec": fieldSet{
			"warmupTimeout": nil,
			"activators":    nil,
			"workload":      nil,
			"strategies": fieldSet{"[]": fieldSet{
				"name":    nil,
				"plugins": fieldSet{"[]": fieldSet{"name": nil, "weight": nil, "config": nil}},
				"engine":  nil, // checked by loading the strategy's fleet
				"args":    nil,
				"tenants": nil,
			}},
		},
	}
}

type fieldSet map[string]fieldSet

// unknownField returns the path of the first field of v (in key order) that
// fs does not know, or "".
func unknownField(v any, fs fieldSet, path string) string {
	if fs == nil {
		return ""
	}
	if elem, ok := fs["[]"]; ok {
		list, _ := v.([]any)
		for i, e := range list {
			if p := unknownField(e, elem, fmt.Sprintf("%s[%d]", path, i)); p != "" {
				return p
			}
		}
		return ""
	}
	m, _ := v.(map[string]any)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		p := k
		if path != "" {
			p = path + "." + k
		}
		sub, ok := fs[k]
		if !ok {
			return p
		}
		if q := unknownField(m[k], sub, p); q != "" {
			return q
		}
	}
	return ""
}

func (c *Comparison) parseBenchmark(where, doc string) error {
	var generic map[string]any
	if err := yaml.Unmarshal([]byte(doc), &generic); err != nil {
		return fmt.Errorf("%s (%s): %w", where, BenchmarkKind, err)
	}
	if p := unknownField(generic, benchmarkFields(), ""); p != "" {
		return fmt.Errorf("%s (%s): %s: unknown field", where, BenchmarkKind, p)
	}
	var b benchmarkDoc
	if err := yaml.UnmarshalStrict([]byte(doc), &b); err != nil {
		return fmt.Errorf("%s (%s): %w", where, BenchmarkKind, err)
	}
	c.Name = b.Metadata.Name
	where = fmt.Sprintf("%s (%s %q)", where, BenchmarkKind, c.Name)
	if c.Name == "" {
		return fmt.Errorf("%s: metadata.name: required", where)
	}
	c.WarmupTimeout = DefaultWarmupTimeout
	if b.Spec.WarmupTimeout != nil {
		d, err := time.ParseDuration(*b.Spec.WarmupTimeout)
		switch {
		case err != nil:
			return fmt.Errorf("%s: spec.warmupTimeout: %q is not a duration such as 90s or 2m", where, *b.Spec.WarmupTimeout)
		case d <= 0:
			return fmt.Errorf("%s: spec.warmupTimeout: must be > 0, got %v", where, d)
		}
		c.WarmupTimeout = d
	}
	c.Activators = 1
	if b.Spec.Activators != nil {
		if *b.Spec.Activators < 1 {
			return fmt.Errorf("%s: spec.activators: must be >= 1, got %d", where, *b.Spec.Activators)
		}
		c.Activators = *b.Spec.Activators
	}
	cfg, err := workloadConfig(b.Spec.Workload)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	c.Config = cfg
	if len(b.Spec.Strategies) == 0 {
		return fmt.Errorf("%s: spec.strategies: at least one strategy is required", where)
	}
	seen := map[string]int{}
	for i, s := range b.Spec.Strategies {
		field := fmt.Sprintf("spec.strategies[%d]", i)
		switch {
		case strings.TrimSpace(s.Name) == "":
			return fmt.Errorf("%s: %s.name: required", where, field)
		case strings.Contains(s.Name, ","):
			return fmt.Errorf("%s: %s.name: %q: must not contain a comma (--only takes comma-separated names)", where, field, s.Name)
		}
		if prev, dup := seen[s.Name]; dup {
			return fmt.Errorf("%s: %s.name: %q is already the name of spec.strategies[%d]", where, field, s.Name, prev)
		}
		seen[s.Name] = i
		if err := checkArgs(field+".args", s.Args); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if err := checkStrategyTenants(field+".tenants", s.Tenants, cfg.Tenants); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	c.Strategies = b.Spec.Strategies
	return nil
}

// workloadConfig applies the workload map as the flags of `kvasir bench run`
// and validates the result. Target is left empty: compare sets it.
func workloadConfig(workload map[string]any) (Config, error) {
	var cfg Config
	fs := flag.NewFlagSet("spec.workload", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	if len(workload) == 0 {
		return Config{}, errors.New("spec.workload: required (the flags of kvasir bench run, at least model)")
	}
	keys := make([]string, 0, len(workload))
	for k := range workload {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		field := "spec.workload." + k
		if k == "tenants" { // a list here, not a file
			ts, err := ParseTenants(field, workload[k])
			if err != nil {
				return Config{}, err
			}
			cfg.Tenants = ts
			continue
		}
		if k == "target" {
			return Config{}, fmt.Errorf("%s: must not be set: compare sends the workload to each strategy's own fleet", field)
		}
		if fs.Lookup(k) == nil {
			if bare := strings.TrimLeft(k, "-"); bare != k && fs.Lookup(bare) != nil {
				return Config{}, fmt.Errorf("%s: unknown key: write the flag's name without dashes: %s", field, bare)
			}
			return Config{}, fmt.Errorf("%s: unknown key (the keys are the flags of kvasir bench run, without dashes)", field)
		}
		v, err := flagValue(workload[k])
		if err != nil {
			return Config{}, fmt.Errorf("%s: %w", field, err)
		}
		if err := fs.Set(k, v); err != nil {
			return Config{}, fmt.Errorf("%s: invalid value %q: %w", field, v, err)
		}
	}
	cfg.Target = "http://127.0.0.1" // checked by Validate; replaced per strategy
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("spec.workload: %w", err)
	}
	cfg.Target = ""
	return cfg, nil
}

// flagValue renders a YAML scalar as a flag value.
func flagValue(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case bool:
		return strconv.FormatBool(v), nil
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return "", fmt.Errorf("%v is not a number", v)
		}
		return strconv.FormatFloat(v, 'f', -1, 64), nil
	case nil:
		return "", errors.New("no value")
	}
	return "", fmt.Errorf("must be a string, a number or a bool, got %T", v)
}

// checkModel makes sure the workload's model (each tenant's, with tenants)
// is served by the fleet.
func (c *Comparison) checkModel(benchDoc int) error {
	field, models := "spec.workload.model", []string{c.Config.Model}
	if len(c.Config.Tenants) > 0 {
		models = models[:0]
		for i := range c.Config.Tenants {
			tc, err := c.Config.TenantConfig(i)
			if err != nil {
				return err
			}
			models = append(models, tc.Model)
		}
	}
	var served []string
	for _, ms := range c.Fleet {
		served = append(served, ms.Spec.Model)
	}
	for i, m := range models {
		model, _, _ := strings.Cut(m, "@")
		if slices.Contains(served, model) {
			continue
		}
		if len(c.Config.Tenants) > 0 && c.Config.Tenants[i].Settings["model"] != "" {
			field = fmt.Sprintf("spec.workload.tenants[%d].model", i)
		}
		return fmt.Errorf("%s: document %d (%s %q): %s: %q is not served by the fleet (its models: %s)",
			c.Source, benchDoc, BenchmarkKind, c.Name, field, m, strings.Join(served, ", "))
	}
	return nil
}

// checkStrategyTenants checks a strategy's tenants (field names them in
// errors) against the workload's: present only with tenants in the
// workload, not empty, each a tenant's name, none twice.
func checkStrategyTenants(field string, names []string, tenants []Tenant) error {
	if names == nil {
		return nil
	}
	if len(tenants) == 0 {
		return fmt.Errorf("%s: spec.workload has no tenants to choose from", field)
	}
	if len(names) == 0 {
		return fmt.Errorf("%s: at least one tenant's name (or leave the field out: all tenants run)", field)
	}
	known := make([]string, len(tenants))
	for i, t := range tenants {
		known[i] = t.Name
	}
	for i, n := range names {
		if !slices.Contains(known, n) {
			return fmt.Errorf("%s[%d]: %q is not one of spec.workload.tenants (%s)", field, i, n, strings.Join(known, ", "))
		}
		if j := slices.Index(names, n); j < i {
			return fmt.Errorf("%s[%d]: %q is already %s[%d]", field, i, n, field, j)
		}
	}
	return nil
}

// StrategyConfig returns the workload strategy s runs: c.Config, with only
// s's tenants (in spec.workload order) when it names some. A tenant kept
// that sets no seed of its own keeps the one it has in the full run (which
// TenantConfig derives from its place in the list), so it sends the same
// arrivals and prompts alone as beside the others.
func (c *Comparison) StrategyConfig(s Strategy) Config {
	cfg := c.Config
	if len(s.Tenants) == 0 {
		return cfg
	}
	cfg.Tenants = nil
	for i, t := range c.Config.Tenants {
		if !slices.Contains(s.Tenants, t.Name) {
			continue
		}
		if _, ok := t.Settings["seed"]; !ok {
			settings := make(map[string]string, len(t.Settings)+1)
			maps.Copy(settings, t.Settings)
			settings["seed"] = strconv.FormatInt(c.Config.tenantSeed(i), 10)
			t.Settings = settings
		}
		cfg.Tenants = append(cfg.Tenants, t)
	}
	return cfg
}

// Select returns the strategies named (in file order), or all of them when
// names is empty. An unknown name is an error that lists the known ones.
func (c *Comparison) Select(names []string) ([]Strategy, error) {
	if len(names) == 0 {
		return slices.Clone(c.Strategies), nil
	}
	want := map[string]bool{}
	for _, n := range names {
		if !slices.ContainsFunc(c.Strategies, func(s Strategy) bool { return s.Name == n }) {
			known := make([]string, len(c.Strategies))
			for i, s := range c.Strategies {
				known[i] = s.Name
			}
			return nil, fmt.Errorf("--only: no strategy %q in %s (it has: %s)", n, c.Source, strings.Join(known, ", "))
		}
		want[n] = true
	}
	var out []Strategy
	for _, s := range c.Strategies {
		if want[s.Name] {
			out = append(out, s)
		}
	}
	return out, nil
}

// FleetYAML renders the fleet of strategy s: the file's ModelService
// documents with spec.routing.plugins set to s's plugins (spec.routing
// removed when s has none). The Benchmark document is left out but its place
// kept, so document numbers in errors are those of the source file.
func (c *Comparison) FleetYAML(s Strategy) ([]byte, error) {
	var plugins []any
	if len(s.Plugins) > 0 {
		raw, err := json.Marshal(s.Plugins)
		if err != nil {
			return nil, fmt.Errorf("strategy %q: plugins: %w", s.Name, err)
		}
		if err := json.Unmarshal(raw, &plugins); err != nil {
			return nil, fmt.Errorf("strategy %q: plugins: %w", s.Name, err)
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "# Generated by kvasir bench compare from %s, strategy %q.\n", c.Source, s.Name)
	if len(s.Args) > 0 { // checked: no control characters
		fmt.Fprintf(&sb, "# Run with these flags of kvasir local: %s\n", strings.Join(s.Args, " "))
	}
	for i := range c.docs {
		if i > 0 {
			sb.WriteString("---\n")
		}
		if t, ok := c.tenantDocs[i]; ok {
			sb.WriteString(strings.TrimLeft(t, "\n"))
			if !strings.HasSuffix(t, "\n") {
				sb.WriteByte('\n')
			}
			continue
		}
		m, ok := c.fleetDocs[i]
		if !ok {
			continue
		}
		doc := cloneMap(m)
		spec, ok := doc["spec"].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: document %d: spec: must be a mapping", c.Source, i+1)
		}
		if plugins == nil {
			delete(spec, "routing")
		} else {
			spec["routing"] = map[string]any{"plugins": plugins}
		}
		if len(s.Engine) > 0 {
			tmpl, _ := spec["template"].(map[string]any)
			eng, _ := tmpl["engine"].(map[string]any)
			if tmpl == nil || eng == nil {
				return nil, fmt.Errorf("%s: document %d: spec.template.engine: must be a mapping", c.Source, i+1)
			}
			t, e := maps.Clone(tmpl), maps.Clone(eng)
			maps.Copy(e, s.Engine)
			t["engine"] = e
			spec["template"] = t
		}
		b, err := yaml.Marshal(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", c.Source, i+1, err)
		}
		sb.Write(b)
	}
	return []byte(sb.String()), nil
}

// cloneMap copies m and the spec mapping FleetYAML changes (the rest is
// shared, read-only).
func cloneMap(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	if spec, ok := m["spec"].(map[string]any); ok {
		s := make(map[string]any, len(spec))
		for k, v := range spec {
			s[k] = v
		}
		out["spec"] = s
	}
	return out
}
