package kube

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

func deployment(name string, replicas int32) *appsv1.Deployment {
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(replicas)}}
}

// newClient holds a disaggregated revision with two accelerator variants
// (h100 cheaper than a100), its decode Deployments at 1 and 2 replicas,
// and counts every scale update.
func newClient(t *testing.T, updates *int, fail string) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	require.NoError(t, clientgoscheme.AddToScheme(scheme))
	require.NoError(t, v1alpha1.AddToScheme(scheme))
	rev := &v1alpha1.ModelRevision{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "llama-00001"}}
	rev.Spec.Roles = &v1alpha1.RolesSpec{}
	rev.Spec.Accelerators = []v1alpha1.AcceleratorVariant{{Name: "a100", Cost: 2}, {Name: "h100", Cost: 1}}
	return fake.NewClientBuilder().WithScheme(scheme).
		WithObjects(rev, deployment("llama-00001-decode-h100", 1), deployment("llama-00001-decode-a100", 2)).
		WithInterceptorFuncs(interceptor.Funcs{SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
			if obj.GetName() == fail {
				return errors.New("refused")
			}
			*updates++
			return c.SubResource(sub).Update(ctx, obj, opts...)
		}}).Build()
}

func replicasOf(t *testing.T, c client.Client, name string) int32 {
	t.Helper()
	d := &appsv1.Deployment{}
	require.NoError(t, c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: name}, d))
	return *d.Spec.Replicas
}

func TestScaleVariants(t *testing.T) {
	decode := fleet.Key{Namespace: "default", Service: "llama", Revision: "llama-00001", Role: fleet.RoleDecode}
	for _, tc := range []struct {
		name             string
		key              fleet.Key
		counts           map[string]int
		fail             string
		wantH100, wantA1 int32
		wantUpdates      int
		wantErr          string
	}{
		{name: "each variant to its count", key: decode, counts: map[string]int{"h100": 3, "a100": 1},
			wantH100: 3, wantA1: 1, wantUpdates: 2},
		{name: "variants left out go to zero", key: decode, counts: map[string]int{"h100": 1},
			wantH100: 1, wantA1: 0, wantUpdates: 1},
		{name: "nothing changes, nothing written", key: decode, counts: map[string]int{"h100": 1, "a100": 2},
			wantH100: 1, wantA1: 2},
		{name: "one Deployment failing does not stop the other", key: decode, counts: map[string]int{"h100": 4, "a100": 0},
			fail: "llama-00001-decode-h100", wantH100: 1, wantA1: 0, wantUpdates: 1, wantErr: "scaling deployment default/llama-00001-decode-h100 to 4: refused"},
		{name: "unknown variant", key: decode, counts: map[string]int{"v100": 1},
			wantH100: 1, wantA1: 2, wantErr: `no accelerator variant "v100"`},
		{name: "negative count", key: decode, counts: map[string]int{"h100": -1},
			wantH100: 1, wantA1: 2, wantErr: "negative replicas"},
		{name: "unknown revision", key: fleet.Key{Namespace: "default", Revision: "gone"}, counts: map[string]int{"": 1},
			wantH100: 1, wantA1: 2, wantErr: fleet.ErrUnknown{Key: fleet.Key{Namespace: "default", Revision: "gone"}}.Error()},
		{name: "a missing Deployment", key: fleet.Key{Namespace: "default", Revision: "llama-00001", Role: fleet.RolePrefill},
			counts: map[string]int{"h100": 1}, wantH100: 1, wantA1: 2, wantErr: "getting deployment default/llama-00001-prefill-h100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			updates := 0
			c := newClient(t, &updates, tc.fail)
			err := (&Scaler{Client: c}).ScaleVariants(context.Background(), tc.key, tc.counts)
			if tc.wantErr == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tc.wantErr)
			}
			require.Equal(t, tc.wantH100, replicasOf(t, c, "llama-00001-decode-h100"))
			require.Equal(t, tc.wantA1, replicasOf(t, c, "llama-00001-decode-a100"))
			require.Equal(t, tc.wantUpdates, updates)
		})
	}
}

// Scale is ScaleVariants for a role without variants.
func TestScaleWithoutVariants(t *testing.T) {
	scheme := runtime.NewScheme()
	require.NoError(t, clientgoscheme.AddToScheme(scheme))
	require.NoError(t, v1alpha1.AddToScheme(scheme))
	rev := &v1alpha1.ModelRevision{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "m-00001"}}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(rev, deployment("m-00001-deployment", 0)).Build()
	key := fleet.Key{Namespace: "default", Service: "m", Revision: "m-00001"}
	require.NoError(t, (&Scaler{Client: c}).Scale(context.Background(), key, 2))
	require.Equal(t, int32(2), replicasOf(t, c, "m-00001-deployment"))
}
