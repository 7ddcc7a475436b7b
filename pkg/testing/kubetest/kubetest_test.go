package kubetest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The API server built from the module proxy starts and answers, with a
// version clients can parse.
func TestAPIServerStarts(t *testing.T) {
	cfg := Start(t)
	cs, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	v, err := cs.Discovery().ServerVersion()
	require.NoError(t, err)
	require.Equal(t, "1", v.Major)
	require.Equal(t, "35", v.Minor)
	_, err = cs.CoreV1().Namespaces().List(context.Background(), metav1.ListOptions{})
	require.NoError(t, err)
}
