package names

import (
	"testing"

	"github.com/stretchr/testify/assert"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

func TestNames(t *testing.T) {
	rev := &v1alpha1.ModelRevision{ObjectMeta: metav1.ObjectMeta{Name: "llama-00002"}}
	assert.Equal(t, []string{fleet.RoleUnified}, Roles(rev))
	assert.Equal(t, "llama-00002-deployment", Deployment(rev, fleet.RoleUnified, ""))
	assert.Equal(t, "llama-00002-h100", Deployment(rev, fleet.RoleUnified, "h100"))
	assert.Equal(t, "llama-00002-prefill", Deployment(rev, fleet.RolePrefill, ""))
	assert.Equal(t, "llama-00002-decode-h100", Deployment(rev, fleet.RoleDecode, "h100"))
	assert.Equal(t, "llama-00002", Service(rev, fleet.RoleUnified))
	assert.Equal(t, "llama-00002-decode", Service(rev, fleet.RoleDecode))
	assert.Equal(t, "llama-lora-adapters", LoRAConfigMap("llama"))
	assert.Equal(t, "llama-00002-group", LeaderWorkerSet(rev, fleet.RoleUnified, ""))
	assert.Equal(t, "llama-00002-h100-group", LeaderWorkerSet(rev, fleet.RoleUnified, "h100"))
	assert.Equal(t, "llama-00002-decode-group", LeaderWorkerSet(rev, fleet.RoleDecode, ""))
	assert.Equal(t, "llama-00002-prefill-h100-group", LeaderWorkerSet(rev, fleet.RolePrefill, "h100"))
	// LWS names its headless Service after the set: never a role's Service.
	for _, role := range []string{fleet.RoleUnified, fleet.RolePrefill, fleet.RoleDecode} {
		for _, variant := range []string{"", "h100", "decode", "prefill", "group"} {
			for _, svc := range []string{fleet.RoleUnified, fleet.RolePrefill, fleet.RoleDecode} {
				assert.NotEqual(t, Service(rev, svc), LeaderWorkerSet(rev, role, variant))
			}
		}
	}
	rev.Spec.Roles = &v1alpha1.RolesSpec{}
	assert.Equal(t, []string{fleet.RolePrefill, fleet.RoleDecode}, Roles(rev))
}
