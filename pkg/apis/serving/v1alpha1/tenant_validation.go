package v1alpha1

import (
	"fmt"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"knative.dev/pkg/apis"
)

var (
	// sha256Hex is a SHA-256 digest in lowercase hexadecimal.
	sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)
	// envName is a portable environment variable name.
	envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// secretDataKey is a valid key of a Secret's data.
	secretDataKey = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)
	// tenantModel is a model name, optionally followed by "@" and a tag.
	tenantModel = regexp.MustCompile(`^[^@]+(@[a-z]([-a-z0-9]*[a-z0-9])?)?$`)
)

// msgSHA256 explains a malformed spec.apiKeys[].sha256. No error ever shows
// the value: it may be a key pasted by mistake.
const msgSHA256 = "must be 64 lowercase hexadecimal characters: the SHA-256 of the key, never the key"

// ValidSHA256 reports whether s is a SHA-256 digest in lowercase
// hexadecimal, as spec.apiKeys[].sha256 must be.
func ValidSHA256(s string) bool { return sha256Hex.MatchString(s) }

// Validate checks a defaulted Tenant and returns every problem with its
// field path, or nil. No message holds the value of an sha256 field.
func (t *Tenant) Validate() *apis.FieldError {
	var errs *apis.FieldError
	if t.Name == "" {
		errs = errs.Also(apis.ErrMissingField("metadata.name"))
	} else {
		errs = errs.Also(validateDNSLabel(t.Name, MaxTenantNameLength, "metadata.name"))
	}
	return errs.Also(t.Spec.validate().ViaField("spec"))
}

func (s *TenantSpec) validate() *apis.FieldError {
	errs := validateAPIKeys(s.APIKeys).ViaField("apiKeys")
	switch s.Priority {
	case PriorityCritical, PriorityStandard, PrioritySheddable:
	default:
		errs = errs.Also(apis.ErrInvalidValue(s.Priority, "priority", "must be one of critical, standard, sheddable"))
	}
	if s.Weight == nil || *s.Weight < 1 {
		var w any = "unset"
		if s.Weight != nil {
			w = *s.Weight
		}
		errs = errs.Also(apis.ErrInvalidValue(w, "weight", "must be >= 1"))
	}
	errs = errs.Also(validateTenantModels(s.Models).ViaField("models"))
	return errs.Also(validateLimits(s.Limits).ViaField("limits"))
}

// validateAPIKeys checks the list of keys: at least one, each with exactly
// one source, no source twice.
func validateAPIKeys(keys []APIKey) *apis.FieldError {
	var errs *apis.FieldError
	switch {
	case len(keys) == 0:
		return apis.ErrGeneric("a tenant needs at least one API key", apis.CurrentField)
	case len(keys) > MaxTenantAPIKeys:
		errs = errs.Also(apis.ErrOutOfBoundsValue(len(keys), 1, MaxTenantAPIKeys, apis.CurrentField))
	}
	seen := map[string]int{}
	for i, k := range keys {
		errs = errs.Also(k.validate().ViaIndex(i))
		id := k.source()
		if prev, dup := seen[id]; dup {
			errs = errs.Also(apis.ErrGeneric(fmt.Sprintf("the same key as apiKeys[%d]", prev), apis.CurrentField).ViaIndex(i))
		}
		seen[id] = i
	}
	return errs
}

// source identifies where a key comes from, to find a key given twice.
func (k *APIKey) source() string {
	ref := ""
	if k.SecretKeyRef != nil {
		ref = k.SecretKeyRef.Name + "/" + k.SecretKeyRef.Key
	}
	return strings.Join([]string{k.SHA256, ref, k.FromEnv}, "\x00")
}

func (k *APIKey) validate() *apis.FieldError {
	var set []string
	if k.SHA256 != "" {
		set = append(set, "sha256")
	}
	if k.SecretKeyRef != nil {
		set = append(set, "secretKeyRef")
	}
	if k.FromEnv != "" {
		set = append(set, "fromEnv")
	}
	switch {
	case len(set) == 0:
		return apis.ErrMissingOneOf("sha256", "secretKeyRef", "fromEnv")
	case len(set) > 1:
		return apis.ErrMultipleOneOf(set...)
	}
	switch {
	case k.SHA256 != "" && !ValidSHA256(k.SHA256):
		return apis.ErrGeneric(msgSHA256, "sha256")
	case k.FromEnv != "" && (len(k.FromEnv) > MaxEnvNameLength || !envName.MatchString(k.FromEnv)):
		// Not shown either: it may be a key written where its variable's
		// name belongs.
		return apis.ErrGeneric(fmt.Sprintf("must be the name of an environment variable ([A-Za-z_][A-Za-z0-9_]*, at most %d characters), never the key", MaxEnvNameLength), "fromEnv")
	case k.SecretKeyRef != nil:
		return k.SecretKeyRef.validate().ViaField("secretKeyRef")
	}
	return nil
}

func (r *SecretKeySelector) validate() *apis.FieldError {
	var errs *apis.FieldError
	if r.Name == "" {
		errs = errs.Also(apis.ErrMissingField("name"))
	} else if msgs := validation.IsDNS1123Subdomain(r.Name); len(msgs) > 0 {
		errs = errs.Also(apis.ErrInvalidValue(r.Name, "name", strings.Join(msgs, "; ")))
	}
	switch {
	case r.Key == "":
		errs = errs.Also(apis.ErrMissingField("key"))
	case len(r.Key) > validation.DNS1123SubdomainMaxLength || !secretDataKey.MatchString(r.Key):
		errs = errs.Also(apis.ErrInvalidValue(r.Key, "key", "must be a Secret data key ([-._a-zA-Z0-9]+) of at most 253 characters"))
	}
	return errs
}

// validateTenantModels checks spec.models: at least one, each a model
// reference or "*", none twice.
func validateTenantModels(models []string) *apis.FieldError {
	var errs *apis.FieldError
	switch {
	case len(models) == 0:
		return apis.ErrGeneric(`must name at least one model ("*" for all)`, apis.CurrentField)
	case len(models) > MaxTenantModels:
		errs = errs.Also(apis.ErrOutOfBoundsValue(len(models), 1, MaxTenantModels, apis.CurrentField))
	}
	seen := map[string]bool{}
	for i, m := range models {
		errs = errs.Also(validateModelRef(m).ViaIndex(i))
		if seen[m] {
			errs = errs.Also(apis.ErrGeneric(fmt.Sprintf("duplicate model %q", m), apis.CurrentField).ViaIndex(i))
		}
		seen[m] = true
	}
	return errs
}

// validateModelRef checks one model reference: "*", or a model name with
// an optional "@tag" (the tag a DNS label), bounded.
func validateModelRef(m string) *apis.FieldError {
	if len(m) > MaxTenantModelLength {
		return apis.ErrInvalidValue(len(m), apis.CurrentField, fmt.Sprintf("must be at most %d characters long", MaxTenantModelLength))
	}
	if !tenantModel.MatchString(m) {
		return apis.ErrInvalidValue(m, apis.CurrentField, `must be "*" or a model name, optionally followed by "@" and a traffic tag`)
	}
	return nil
}

// validateLimits checks spec.limits: each with a model and at least one
// bound, every bound >= 1, at most one limit per model.
func validateLimits(limits []TenantLimit) *apis.FieldError {
	var errs *apis.FieldError
	if len(limits) > MaxTenantLimits {
		errs = errs.Also(apis.ErrOutOfBoundsValue(len(limits), 0, MaxTenantLimits, apis.CurrentField))
	}
	seen := map[string]int{}
	for i, l := range limits {
		errs = errs.Also(l.validate().ViaIndex(i))
		if prev, dup := seen[l.Model]; dup {
			errs = errs.Also(apis.ErrGeneric(fmt.Sprintf("model %q already has a limit (limits[%d])", l.Model, prev), "model").ViaIndex(i))
		}
		seen[l.Model] = i
	}
	return errs
}

// bounds returns the limit's bounds by field name, nil when unset.
func (l *TenantLimit) bounds() map[string]*int64 {
	return map[string]*int64{
		"requestsPerMinute":     l.RequestsPerMinute,
		"tokensPerMinute":       l.TokensPerMinute,
		"inputTokensPerMinute":  l.InputTokensPerMinute,
		"outputTokensPerMinute": l.OutputTokensPerMinute,
		"maxConcurrentRequests": l.MaxConcurrentRequests,
	}
}

func (l *TenantLimit) validate() *apis.FieldError {
	errs := validateModelRef(l.Model).ViaField("model")
	var set int
	for name, v := range l.bounds() {
		if v == nil {
			continue
		}
		set++
		if *v < 1 {
			errs = errs.Also(apis.ErrInvalidValue(*v, name, "must be >= 1"))
		}
	}
	if set == 0 {
		errs = errs.Also(apis.ErrGeneric("a limit sets at least one bound", "requestsPerMinute", "tokensPerMinute",
			"inputTokensPerMinute", "outputTokensPerMinute", "maxConcurrentRequests"))
	}
	return errs
}
