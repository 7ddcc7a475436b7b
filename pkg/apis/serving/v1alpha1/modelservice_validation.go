package v1alpha1

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"knative.dev/pkg/apis"
)

// Validate checks a defaulted ModelService and returns every problem with its
// field path, or nil.
func (ms *ModelService) Validate() *apis.FieldError {
	var errs *apis.FieldError
	if ms.Name == "" {
		errs = errs.Also(apis.ErrMissingField("metadata.name"))
	} else {
		errs = errs.Also(validateDNSLabel(ms.Name, MaxServiceNameLength, "metadata.name"))
	}
	errs = errs.Also(validateModel(ms.Spec.Model, ms.Spec.LoRAAdapters).ViaField("spec"))
	errs = errs.Also(ms.Spec.Template.validate().ViaField("spec.template"))
	errs = errs.Also(validateTraffic(ms.Spec.Traffic).ViaField("spec.traffic"))
	if ms.Spec.Routing != nil {
		errs = errs.Also(ms.Spec.Routing.validate().ViaField("spec.routing"))
	}
	return errs
}

// validateModel checks a model name and its adapters (paths model,
// loraAdapters[i]): no "@" (it separates a traffic tag), bounded, adapters
// non-empty and distinct from each other and from the model.
func validateModel(model string, adapters []string) *apis.FieldError {
	var errs *apis.FieldError
	if strings.Contains(model, "@") {
		errs = errs.Also(apis.ErrInvalidValue(model, "model", `"@" separates a model from a traffic tag`))
	}
	if len(model) > MaxModelNameLength {
		errs = errs.Also(apis.ErrInvalidValue(model, "model", fmt.Sprintf("must be at most %d characters", MaxModelNameLength)))
	}
	if len(adapters) > MaxLoRAAdapters {
		errs = errs.Also(apis.ErrOutOfBoundsValue(len(adapters), 0, MaxLoRAAdapters, "loraAdapters"))
	}
	seen := map[string]bool{model: true}
	for i, a := range adapters {
		field := fmt.Sprintf("loraAdapters[%d]", i)
		switch {
		case a == "":
			errs = errs.Also(apis.ErrInvalidValue(a, field, "must not be empty"))
		case strings.Contains(a, "@"):
			errs = errs.Also(apis.ErrInvalidValue(a, field, `"@" separates a model from a traffic tag`))
		case strings.HasPrefix(a, "-") || strings.ContainsAny(a, "=, \t\r\n"):
			// An adapter's name is also its path on the engine's command
			// line (name=path): it must not read as a flag or split.
			errs = errs.Also(apis.ErrInvalidValue(a, field, `must not start with "-" or hold "=", "," or whitespace`))
		case len(a) > MaxModelNameLength:
			errs = errs.Also(apis.ErrInvalidValue(a, field, fmt.Sprintf("must be at most %d characters", MaxModelNameLength)))
		case seen[a]:
			errs = errs.Also(apis.ErrInvalidValue(a, field, "duplicate of the model or of another adapter"))
		}
		seen[a] = true
	}
	return errs
}

// validateDNSLabel checks that name is a DNS-1035 label (what Kubernetes
// requires of a Service name) of at most max characters.
func validateDNSLabel(name string, max int, field string) *apis.FieldError {
	if msgs := validation.IsDNS1035Label(name); len(msgs) > 0 {
		return apis.ErrInvalidValue(name, field, strings.Join(msgs, "; "))
	}
	if len(name) > max {
		return apis.ErrInvalidValue(name, field, fmt.Sprintf("must be at most %d characters", max))
	}
	return nil
}

// validate checks the shape of the plugin list; each plugin's name and
// config are checked by the scheduler that builds them (pkg/scheduler).
func (r *RoutingSpec) validate() *apis.FieldError {
	var errs *apis.FieldError
	if len(r.Plugins) > MaxRoutingPlugins {
		errs = errs.Also(apis.ErrOutOfBoundsValue(len(r.Plugins), 0, MaxRoutingPlugins, "plugins"))
	}
	seen := map[string]bool{}
	for i, p := range r.Plugins {
		switch {
		case p.Name == "":
			errs = errs.Also(apis.ErrMissingField("name").ViaFieldIndex("plugins", i))
		case seen[p.Name]:
			errs = errs.Also((&apis.FieldError{Message: "duplicate plugin " + strconv.Quote(p.Name), Paths: []string{"name"}}).ViaFieldIndex("plugins", i))
		}
		seen[p.Name] = true
		if p.Weight < 0 {
			errs = errs.Also(apis.ErrInvalidValue(p.Weight, "weight", "must be >= 0").ViaFieldIndex("plugins", i))
		}
	}
	return errs
}

func (t *RevisionTemplate) validate() *apis.FieldError {
	var errs *apis.FieldError
	switch t.Engine.Type {
	case EngineVLLM, EngineSGLang, EngineSim, EngineCustom:
	default:
		errs = errs.Also(apis.ErrInvalidValue(t.Engine.Type, "engine.type", "must be one of vllm, sglang, sim, custom"))
	}
	if t.Engine.Type == EngineCustom && len(t.Engine.Command) == 0 && t.Engine.Image == "" {
		errs = errs.Also(apis.ErrMissingOneOf("engine.command", "engine.image"))
	}
	if t.Engine.Port < 1 || t.Engine.Port > 65535 {
		errs = errs.Also(apis.ErrOutOfBoundsValue(t.Engine.Port, 1, 65535, "engine.port"))
	}
	errs = errs.Also(t.Engine.validateEndpoints().ViaField("engine"))
	if t.ContainerConcurrency < 0 {
		errs = errs.Also(apis.ErrInvalidValue(t.ContainerConcurrency, "containerConcurrency", "must be >= 0"))
	}
	if t.TimeoutSeconds < 0 {
		errs = errs.Also(apis.ErrInvalidValue(t.TimeoutSeconds, "timeoutSeconds", "must be >= 0"))
	}
	errs = errs.Also(t.Scaling.validate().ViaField("scaling"))
	if t.Roles != nil {
		if t.Roles.Prefill == nil || t.Roles.Decode == nil {
			errs = errs.Also(apis.ErrMissingField("roles.prefill", "roles.decode"))
		}
		for name, r := range map[string]*RoleSpec{"prefill": t.Roles.Prefill, "decode": t.Roles.Decode} {
			if r != nil && r.Scaling != nil {
				errs = errs.Also(r.Scaling.validate().ViaField("roles", name, "scaling"))
			}
		}
		if r := t.Roles.Ratio; r != nil {
			if r.Min != nil && *r.Min < 0 {
				errs = errs.Also(apis.ErrInvalidValue(*r.Min, "roles.ratio.min", "must be >= 0"))
			}
			if r.Max != nil && *r.Max <= 0 {
				errs = errs.Also(apis.ErrInvalidValue(*r.Max, "roles.ratio.max", "must be > 0"))
			}
			if r.Min != nil && r.Max != nil && *r.Min > *r.Max {
				errs = errs.Also(apis.ErrInvalidValue(*r.Min, "roles.ratio.min", fmt.Sprintf("must be <= max (%g)", *r.Max)))
			}
		}
	}
	if len(t.Accelerators) > MaxAcceleratorVariants {
		errs = errs.Also(apis.ErrOutOfBoundsValue(len(t.Accelerators), 0, MaxAcceleratorVariants, "accelerators"))
	}
	seen := map[string]bool{}
	for i, v := range t.Accelerators {
		switch {
		case v.Name == "":
			errs = errs.Also(apis.ErrMissingField("name").ViaFieldIndex("accelerators", i))
		case seen[v.Name]:
			errs = errs.Also(apis.ErrMultipleOneOf("name").ViaFieldIndex("accelerators", i))
		case len(v.Name) > 63:
			errs = errs.Also(apis.ErrInvalidValue(v.Name, "name", "must be at most 63 characters").ViaFieldIndex("accelerators", i))
		}
		seen[v.Name] = true
		if v.Cost < 0 {
			errs = errs.Also(apis.ErrInvalidValue(v.Cost, "cost", "must be >= 0").ViaFieldIndex("accelerators", i))
		}
	}
	errs = errs.Also(t.validateGroups())
	errs = errs.Also(t.validateTopology())
	return errs
}

func (s *ScalingSpec) validate() *apis.FieldError {
	var errs *apis.FieldError
	if s.MinScale != nil && *s.MinScale < 0 {
		errs = errs.Also(apis.ErrInvalidValue(*s.MinScale, "minScale", "must be >= 0"))
	}
	if s.MaxScale != nil && *s.MaxScale < 0 {
		errs = errs.Also(apis.ErrInvalidValue(*s.MaxScale, "maxScale", "must be >= 0"))
	}
	if s.MinScale != nil && s.MaxScale != nil && *s.MaxScale > 0 && *s.MinScale > *s.MaxScale {
		errs = errs.Also(apis.ErrInvalidValue(*s.MinScale, "minScale", fmt.Sprintf("must be <= maxScale (%d)", *s.MaxScale)))
	}
	if s.InitialScale != nil && *s.InitialScale < 0 {
		errs = errs.Also(apis.ErrInvalidValue(*s.InitialScale, "initialScale", "must be >= 0"))
	}
	if s.ScaleToZeroGracePeriod != nil && s.ScaleToZeroGracePeriod.Duration < 0 {
		errs = errs.Also(apis.ErrInvalidValue(s.ScaleToZeroGracePeriod.Duration.String(), "scaleToZeroGracePeriod", "must be >= 0"))
	}
	if t := s.Target; t != nil {
		for name, v := range map[string]*float64{"concurrency": t.Concurrency, "kvCacheUsage": t.KVCacheUsage,
			"waitingRequests": t.WaitingRequests, "tokensPerSecond": t.TokensPerSecond, "cpu": t.CPU, "memoryGiB": t.MemoryGiB} {
			if v != nil && *v <= 0 {
				errs = errs.Also(apis.ErrInvalidValue(*v, "target."+name, "must be > 0"))
			}
		}
		if t.KVCacheUsage != nil && *t.KVCacheUsage > 1 {
			errs = errs.Also(apis.ErrOutOfBoundsValue(*t.KVCacheUsage, 0, 1, "target.kvCacheUsage"))
		}
	}
	return errs
}

func validateTraffic(targets []TrafficTarget) *apis.FieldError {
	if len(targets) == 0 {
		return nil
	}
	var errs *apis.FieldError
	if len(targets) > MaxTrafficTargets {
		errs = errs.Also(apis.ErrOutOfBoundsValue(len(targets), 0, MaxTrafficTargets, apis.CurrentField))
	}
	var sum int64
	tags := map[string]bool{}
	for i, t := range targets {
		latest := t.LatestRevision != nil && *t.LatestRevision
		if (t.RevisionName == "") == !latest {
			errs = errs.Also(apis.ErrMultipleOneOf("revisionName", "latestRevision").ViaIndex(i))
		}
		if t.RevisionName != "" {
			errs = errs.Also(validateDNSLabel(t.RevisionName, 63, "revisionName").ViaIndex(i))
		}
		if t.Percent != nil {
			if *t.Percent < 0 || *t.Percent > 100 {
				errs = errs.Also(apis.ErrOutOfBoundsValue(*t.Percent, 0, 100, "percent").ViaIndex(i))
			}
			sum += *t.Percent
		}
		if t.Tag != "" {
			errs = errs.Also(validateDNSLabel(t.Tag, 63, "tag").ViaIndex(i))
			if tags[t.Tag] {
				errs = errs.Also(apis.ErrGeneric(fmt.Sprintf("duplicate tag %q", t.Tag), "tag").ViaIndex(i))
			}
			tags[t.Tag] = true
		}
	}
	if sum != 100 {
		errs = errs.Also(apis.ErrInvalidValue(sum, "percent", "traffic percents must sum to 100"))
	}
	return errs
}

// maxEnginePath bounds healthPath and metricsPath.
const maxEnginePath = 256

// validateEndpoints checks the paths, KV events and tokenizer of an engine.
func (e *EngineSpec) validateEndpoints() *apis.FieldError {
	var errs *apis.FieldError
	for name, p := range map[string]string{"healthPath": e.HealthPath, "metricsPath": e.MetricsPath} {
		if p != "" && !validPath(p, maxEnginePath) {
			errs = errs.Also(apis.ErrInvalidValue(p, name, "must start with / and hold printable ASCII without spaces, at most 256 bytes"))
		}
	}
	if k := e.KVEvents; k != nil {
		if k.Endpoint != "" && (!strings.HasPrefix(k.Endpoint, "tcp://") || len(k.Endpoint) > maxEnginePath || strings.ContainsAny(k.Endpoint, " \t\n")) {
			errs = errs.Also(apis.ErrInvalidValue(k.Endpoint, "kvEvents.endpoint", "must be a tcp:// endpoint of at most 256 bytes"))
		}
		if len(k.Topic) > maxEnginePath {
			errs = errs.Also(apis.ErrInvalidValue(len(k.Topic), "kvEvents.topic", "must be at most 256 bytes"))
		}
	}
	if tk := e.Tokenizer; tk != nil {
		switch tk.Type {
		case TokenizerNone, TokenizerBuiltin:
			if tk.Path != "" {
				errs = errs.Also(apis.ErrDisallowedFields("tokenizer.path"))
			}
		case TokenizerFile:
			if tk.Path == "" {
				errs = errs.Also(apis.ErrMissingField("tokenizer.path"))
			}
		case TokenizerEngine:
			if tk.Path != "" && !validPath(tk.Path, maxEnginePath) {
				errs = errs.Also(apis.ErrInvalidValue(tk.Path, "tokenizer.path", "must start with / and hold printable ASCII without spaces"))
			}
		default:
			errs = errs.Also(apis.ErrInvalidValue(tk.Type, "tokenizer.type", "must be one of none, builtin, file, engine"))
		}
		if len(tk.Path) > 4096 {
			errs = errs.Also(apis.ErrInvalidValue(len(tk.Path), "tokenizer.path", "must be at most 4096 bytes"))
		}
	}
	return errs
}

// validPath reports whether p is an absolute URL path of printable ASCII
// without spaces, at most max bytes.
func validPath(p string, max int) bool {
	if len(p) == 0 || len(p) > max || p[0] != '/' {
		return false
	}
	for i := 0; i < len(p); i++ {
		if p[i] <= ' ' || p[i] > '~' {
			return false
		}
	}
	return true
}
