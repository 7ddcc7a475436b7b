package reconciler

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
)

// The controller's cache holds Kvasir's Deployments and not the
// cluster's others, and pods without their containers' environment.
func TestCacheHoldsOnlyWhatTheControllerNeeds(t *testing.T) {
	cfg := kubetest.Start(t)
	admin := kubetest.Client(t, cfg)
	ctx := context.Background()
	deployment := func(name string, labels map[string]string) *appsv1.Deployment {
		sel := map[string]string{"app": name}
		return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels},
			Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: sel},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel},
					Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}}}}}
	}
	require.NoError(t, admin.Create(ctx, deployment("theirs", nil)))
	require.NoError(t, admin.Create(ctx, deployment("llama-00001-deployment", map[string]string{v1alpha1.LabelRevision: "llama-00001"})))
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "theirs", Namespace: "default"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x", Args: []string{"--password=hunter2"},
			Env: []corev1.EnvVar{{Name: "DB_PASSWORD", Value: "hunter2"}}}}}}
	require.NoError(t, admin.Create(ctx, pod))

	var cached client.Client
	t.Cleanup(kubetest.Manager(t, cfg, func(mgr ctrl.Manager) error {
		cached = mgr.GetClient()
		return nil
	}, func(o *ctrl.Options) { o.Cache = CacheOptions("") }))

	var ds appsv1.DeploymentList
	require.Eventually(t, func() bool { return cached.List(ctx, &ds) == nil && len(ds.Items) > 0 }, 30*time.Second, 20*time.Millisecond)
	require.Len(t, ds.Items, 1)
	require.Equal(t, "llama-00001-deployment", ds.Items[0].Name)
	err := cached.Get(ctx, client.ObjectKey{Namespace: "default", Name: "theirs"}, &appsv1.Deployment{})
	require.True(t, apierrs.IsNotFound(err), "%v", err)

	got := &corev1.Pod{}
	require.NoError(t, cached.Get(ctx, client.ObjectKeyFromObject(pod), got))
	require.Equal(t, "x", got.Spec.Containers[0].Image)
	require.Empty(t, got.Spec.Containers[0].Env)
	require.Empty(t, got.Spec.Containers[0].Args)
	require.Empty(t, got.ManagedFields)
}
