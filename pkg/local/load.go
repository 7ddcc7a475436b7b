package local

import (
	"bytes"
	"fmt"
	"os"
	"regexp"

	"sigs.k8s.io/yaml"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
)

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// SplitDocuments splits a YAML stream into its documents at the lines that
// are "---" (trailing blanks allowed), as LoadFile reads a file. Empty
// documents are kept so that the index of a document gives its number in
// errors (index+1).
func SplitDocuments(data []byte) []string {
	return docSeparator.Split(string(data), -1)
}

// LoadFile reads ModelService documents (several per file, separated by
// "---"), defaults and validates them. Tenant documents are left to
// LoadTenants and documents of other API groups are skipped; errors name
// the document and the field.
func LoadFile(path string) ([]*v1alpha1.ModelService, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return Load(path, data)
}

// Load parses documents read from source (a name for errors).
func Load(source string, data []byte) ([]*v1alpha1.ModelService, error) {
	var out []*v1alpha1.ModelService
	names := map[string]int{}
	models := map[string]string{}
	err := eachDocument(source, data, v1alpha1.KindModelService, func(n int, doc []byte) error {
		ms := &v1alpha1.ModelService{}
		if err := yaml.UnmarshalStrict(doc, ms); err != nil {
			return fmt.Errorf("%s: document %d: %w", source, n, err)
		}
		if ms.Namespace == "" {
			ms.Namespace = "default"
		}
		ms.SetDefaults()
		if ferr := ms.Validate(); ferr != nil {
			return fmt.Errorf("%s: document %d (ModelService %q): %w", source, n, ms.Name, ferr)
		}
		if ms.Spec.Routing != nil {
			if err := scheduler.DefaultRegistry().Validate(ms.Spec.Routing.Plugins); err != nil {
				return fmt.Errorf("%s: document %d (ModelService %q): spec.routing.%w", source, n, ms.Name, err)
			}
		}
		if prev, dup := names[ms.Namespace+"/"+ms.Name]; dup {
			return fmt.Errorf("%s: document %d: ModelService %q already defined in document %d", source, n, ms.Name, prev)
		}
		names[ms.Namespace+"/"+ms.Name] = n
		if other, dup := models[ms.Spec.Model]; dup {
			return fmt.Errorf("%s: document %d: spec.model %q is already served by ModelService %q", source, n, ms.Spec.Model, other)
		}
		models[ms.Spec.Model] = ms.Name
		out = append(out, ms)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no %s/%s ModelService documents", source, v1alpha1.GroupName, v1alpha1.Version)
	}
	return out, nil
}

// LoadTenants parses the Tenant documents read from source (a name for
// errors), defaults and validates them; ModelService documents are left to
// Load. A Tenant without a namespace is in "default". None is no error:
// without Tenants kvasir local stays open. Errors name the document and the
// field and never hold a key (strict decoding refuses a plain key field
// without showing its value).
func LoadTenants(source string, data []byte) ([]*v1alpha1.Tenant, error) {
	var out []*v1alpha1.Tenant
	names := map[string]int{}
	keys := keyOwners{}
	err := eachDocument(source, data, v1alpha1.KindTenant, func(n int, doc []byte) error {
		t := &v1alpha1.Tenant{}
		if err := yaml.UnmarshalStrict(doc, t); err != nil {
			return fmt.Errorf("%s: document %d: %w", source, n, err)
		}
		if t.Namespace == "" {
			t.Namespace = "default"
		}
		t.SetDefaults()
		if ferr := t.Validate(); ferr != nil {
			return fmt.Errorf("%s: document %d (Tenant %q): %w", source, n, t.Name, ferr)
		}
		if prev, dup := names[t.Namespace+"/"+t.Name]; dup {
			return fmt.Errorf("%s: document %d: Tenant %q already defined in document %d", source, n, t.Name, prev)
		}
		names[t.Namespace+"/"+t.Name] = n
		if err := keys.add(t, n); err != nil {
			return fmt.Errorf("%s: document %d (Tenant %q): %w", source, n, t.Name, err)
		}
		out = append(out, t)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// keyOwners finds a key given to two Tenants, which would authenticate as
// either: the document that gives each sha256 and each fromEnv variable.
type keyOwners map[string]int

// add records t's keys, found in document n, or says which one another
// Tenant already has (by its field path, never its value).
func (o keyOwners) add(t *v1alpha1.Tenant, n int) error {
	for i, k := range t.Spec.APIKeys {
		var id string
		switch {
		case k.SHA256 != "":
			id = "sha256:" + k.SHA256
		case k.FromEnv != "":
			id = "fromEnv:" + k.FromEnv
		default:
			continue
		}
		if prev, dup := o[id]; dup && prev != n {
			return fmt.Errorf("spec.apiKeys[%d]: the same key as a Tenant of document %d", i, prev)
		}
		o[id] = n
	}
	return nil
}

// eachDocument calls fn with the number (from 1) and text of every document
// of kind in data. Blank documents and documents of other API groups are
// skipped, so are this group's other kinds that kvasir local reads; a kind
// of this group it does not read is an error.
func eachDocument(source string, data []byte, kind string, fn func(n int, doc []byte) error) error {
	for i, text := range SplitDocuments(data) {
		doc := []byte(text)
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return fmt.Errorf("%s: document %d: %w", source, i+1, err)
		}
		if head.APIVersion != v1alpha1.GroupName+"/"+v1alpha1.Version {
			continue
		}
		switch head.Kind {
		case kind:
			if err := fn(i+1, doc); err != nil {
				return err
			}
		case v1alpha1.KindModelService, v1alpha1.KindTenant:
		default:
			return fmt.Errorf("%s: document %d: kind %q is not supported here (want %s or %s)",
				source, i+1, head.Kind, v1alpha1.KindModelService, v1alpha1.KindTenant)
		}
	}
	return nil
}
