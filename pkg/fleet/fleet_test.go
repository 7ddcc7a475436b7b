package fleet

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestRoleLabelRoundTrips(t *testing.T) {
	for role, label := range map[string]string{RoleUnified: "unified", RolePrefill: "prefill", RoleDecode: "decode"} {
		assert.Equal(t, label, RoleLabel(role))
		assert.Equal(t, role, RoleOfLabel(label))
	}
	assert.Equal(t, "unified", Key{Revision: "r"}.RoleLabel())
	assert.Equal(t, []string{RoleUnified}, Roles(false))
	assert.Equal(t, []string{RolePrefill, RoleDecode}, Roles(true))
}
