package activator

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/engine"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

func TestServiceConfigOf(t *testing.T) {
	targets := []traffic.Target{{Revision: "llama-00001", Percent: 100}}
	plugins := []v1alpha1.RoutingPlugin{{Name: "least-load"}}
	for _, tc := range []struct {
		name string
		ms   v1alpha1.ModelService
		want ServiceConfig
	}{{
		name: "the model defaults to the service's name",
		ms:   v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "llama"}},
		want: ServiceConfig{Namespace: "ns", Name: "llama", Model: "llama", Traffic: targets},
	}, {
		name: "model, adapters and routing plugins",
		ms: v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "llama"}, Spec: v1alpha1.ModelServiceSpec{
			Model: "meta/llama", LoRAAdapters: []string{"sql"}, Routing: &v1alpha1.RoutingSpec{Plugins: plugins}}},
		want: ServiceConfig{Namespace: "ns", Name: "llama", Model: "meta/llama", LoRAAdapters: []string{"sql"},
			Traffic: targets, Routing: plugins},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, ServiceConfigOf(&tc.ms, targets))
		})
	}
}

func TestRevisionConfigOf(t *testing.T) {
	sim := v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}
	for _, tc := range []struct {
		name string
		tmpl v1alpha1.RevisionTemplate
		want RevisionConfig
	}{{
		name: "unified",
		tmpl: v1alpha1.RevisionTemplate{Engine: sim, ContainerConcurrency: 8, TimeoutSeconds: 600},
		want: RevisionConfig{Name: "r", ContainerConcurrency: 8, Timeout: 10 * time.Minute,
			Tokenizer: engine.Resolve(sim).RoutingTokenizer()},
	}, {
		name: "disaggregated",
		tmpl: v1alpha1.RevisionTemplate{Engine: sim, Roles: &v1alpha1.RolesSpec{}},
		want: RevisionConfig{Name: "r", Disaggregated: true, Tokenizer: engine.Resolve(sim).RoutingTokenizer()},
	}, {
		name: "an engine without KV events routes without a tokenizer",
		tmpl: v1alpha1.RevisionTemplate{Engine: v1alpha1.EngineSpec{Type: v1alpha1.EngineCustom}},
		want: RevisionConfig{Name: "r", Tokenizer: v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerNone}},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, RevisionConfigOf("r", &tc.tmpl))
		})
	}
}
