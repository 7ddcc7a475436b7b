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
// "---"), defaults and validates them. Documents of other API groups are
// skipped; errors name the document and the field.
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
	for i, doc := range SplitDocuments(data) {
		if len(bytes.TrimSpace([]byte(doc))) == 0 {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, i+1, err)
		}
		if head.APIVersion != v1alpha1.GroupName+"/"+v1alpha1.Version {
			continue
		}
		if head.Kind != v1alpha1.KindModelService {
			return nil, fmt.Errorf("%s: document %d: kind %q is not supported here (want %s)", source, i+1, head.Kind, v1alpha1.KindModelService)
		}
		ms := &v1alpha1.ModelService{}
		if err := yaml.UnmarshalStrict([]byte(doc), ms); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, i+1, err)
		}
		if ms.Namespace == "" {
			ms.Namespace = "default"
		}
		ms.SetDefaults()
		if ferr := ms.Validate(); ferr != nil {
			return nil, fmt.Errorf("%s: document %d (ModelService %q): %w", source, i+1, ms.Name, ferr)
		}
		if ms.Spec.Routing != nil {
			if err := scheduler.DefaultRegistry().Validate(ms.Spec.Routing.Plugins); err != nil {
				return nil, fmt.Errorf("%s: document %d (ModelService %q): spec.routing.%w", source, i+1, ms.Name, err)
			}
		}
		if prev, dup := names[ms.Namespace+"/"+ms.Name]; dup {
			return nil, fmt.Errorf("%s: document %d: ModelService %q already defined in document %d", source, i+1, ms.Name, prev)
		}
		names[ms.Namespace+"/"+ms.Name] = i + 1
		if other, dup := models[ms.Spec.Model]; dup {
			return nil, fmt.Errorf("%s: document %d: spec.model %q is already served by ModelService %q", source, i+1, ms.Spec.Model, other)
		}
		models[ms.Spec.Model] = ms.Name
		out = append(out, ms)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no %s/%s ModelService documents", source, v1alpha1.GroupName, v1alpha1.Version)
	}
	return out, nil
}
