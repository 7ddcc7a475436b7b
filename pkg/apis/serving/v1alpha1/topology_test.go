package v1alpha1

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"
)

// topologyKeys are label keys good and bad, hostile ones included.
var topologyKeys = []struct {
	key   string
	valid bool
}{
	{"topology.kubernetes.io/zone", true},
	{"kubernetes.io/hostname", true},
	{"cloud.google.com/gke-nodepool", true},
	{"rack", true},
	{"example.com/network_block.v2", true},
	{"a", true},
	{strings.Repeat("a", 63), true},
	{strings.Repeat("a", 253) + "/" + strings.Repeat("b", 63), true},
	{strings.Repeat("a", 64), false},                                   // name over 63
	{strings.Repeat("a", 254) + "/b", false},                           // prefix over 253
	{strings.Repeat("a", 10000), false},                                // huge
	{"rack key", false},                                                // space
	{"-rack", false},                                                   // leading dash
	{"rack-", false},                                                   // trailing dash
	{"a/b/c", false},                                                   // two slashes
	{"/rack", false},                                                   // empty prefix
	{"Example.COM/rack", false},                                        // prefix not lower case
	{"example.com/", false},                                            // empty name
	{"rack\n", false},                                                  // newline
	{"ráck", false},                                                    // not ASCII
	{"rack;rm -rf /", false},                                           // shell
	{"topology.kubernetes.io/zone\x00", false},                         // NUL
	{"..example/rack", false},                                          // empty DNS label
	{"exa_mple.com/rack", false},                                       // underscore in the prefix
	{"leaderworkerset.sigs.k8s.io/exclusive-topology=zone", false},     // an annotation, not a key
	{"$(LWS_LEADER_ADDRESS)", false},                                   // a placeholder
	{"\u202erack", false},                                              // bidi control
	{"rack" + strings.Repeat("\u00e9", 40), false},                     // multibyte, long
	{strings.Repeat("a.", 126) + "a/" + strings.Repeat("b", 63), true}, // 253-long prefix
}

// Topology keys are checked as label keys, on the template and on each
// role, with their field paths; a refused key is quoted short.
func TestValidateTopologyKey(t *testing.T) {
	for _, tc := range topologyKeys {
		for _, at := range []string{"template", "decode"} {
			ms := &ModelService{}
			require.NoError(t, yaml.UnmarshalStrict([]byte(issueRoles), ms))
			path := "spec.template.topologyKey"
			if at == "template" {
				ms.Spec.Template.TopologyKey = tc.key
			} else {
				ms.Spec.Template.Roles.Decode.TopologyKey = tc.key
				path = "spec.template.roles.decode.topologyKey"
			}
			ms.SetDefaults()
			err := ms.Validate()
			if tc.valid {
				assert.Nil(t, err, "%q at %s", tc.key, at)
				continue
			}
			require.NotNil(t, err, "%q at %s", tc.key, at)
			assert.Equal(t, []string{path}, errorPaths(err), "%q: %v", tc.key, err)
			assert.Contains(t, err.Error(), "label key")
			assert.Less(t, len(err.Error()), 700, "the error quotes the key short")
		}
	}
}

// A revision checks its topology keys at spec.*.
func TestModelRevisionValidatesTopologyKey(t *testing.T) {
	r := &ModelRevision{}
	r.Name = "deepseek-00001"
	r.Spec.Model = "m"
	r.Spec.Engine.Type = EngineVLLM
	r.Spec.Roles = &RolesSpec{Prefill: &RoleSpec{TopologyKey: "bad key"}, Decode: &RoleSpec{}}
	r.SetDefaults()
	err := r.Validate()
	require.NotNil(t, err)
	assert.Equal(t, []string{"spec.roles.prefill.topologyKey"}, errorPaths(err), "%v", err)
}

// A role's topology key replaces the template's; a role without one, even
// with its own parallelism, keeps the template's.
func TestRoleTopologyKey(t *testing.T) {
	tmpl := RevisionTemplate{TopologyKey: "rack"}
	assert.Equal(t, "rack", tmpl.RoleTopologyKey("unified"))
	tmpl.Roles = &RolesSpec{Prefill: &RoleSpec{TopologyKey: "zone"}, Decode: &RoleSpec{Parallelism: par(8, 1, 1, false)}}
	assert.Equal(t, "zone", tmpl.RoleTopologyKey("prefill"))
	assert.Equal(t, "rack", tmpl.RoleTopologyKey("decode"))
	tmpl.TopologyKey = ""
	assert.Equal(t, "", tmpl.RoleTopologyKey("decode"))
}

// The CRDs' pattern for topologyKey takes what Validate takes, and refuses
// what it refuses, but for a prefix over 253 characters (left to Validate,
// which the ModelService reconciler runs) and what maxLength refuses.
func TestTopologyKeyPatternMatchesValidate(t *testing.T) {
	crd, err := os.ReadFile(filepath.Join("..", "..", "..", "..", "config", "300-modelservice.yaml"))
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^\s+topologyKey:\n(?:\s+.*\n)*?\s+pattern: (\S+)$`).FindSubmatch(crd)
	require.NotNil(t, m, "topologyKey's pattern in the CRD")
	pattern := regexp.MustCompile(string(m[1]))
	for _, tc := range topologyKeys {
		byPattern := pattern.MatchString(tc.key) && len(tc.key) <= MaxTopologyKeyLength
		if !tc.valid && byPattern {
			prefix, _, _ := strings.Cut(tc.key, "/")
			assert.Greater(t, len(prefix), 253, "the CRD lets %q through", tc.key)
			continue
		}
		assert.Equal(t, tc.valid, byPattern, "%q", tc.key)
	}
}
