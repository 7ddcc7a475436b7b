package reconciler

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

// CacheOptions are the controller's cache options: namespace only ("":
// all), and of the kinds it needs cluster-wide rights on, only what it
// must hold.
//   - Deployments, Services and NetworkPolicies: only Kvasir's, those
//     labelled with v1alpha1.LabelRevision. The controller neither lists
//     nor watches the cluster's others (RBAC cannot select by label: its
//     rights still cover them). LeaderWorkerSets are not selected so: an
//     entry here needs the kind installed when the cache is made, and
//     the controller must start without it; it holds them all, once a
//     grouped revision or the reconciler's watch asks for them.
//   - ConfigMaps: only the services' LoRA adapters, labelled with
//     v1alpha1.LabelService.
//   - Pods: all of them, since the autoscaler counts the accelerators
//     every pod on a node takes, but without their containers' command,
//     arguments and environment (which may hold credentials) and without
//     managed fields.
func CacheOptions(namespace string) cache.Options {
	kvasir := labels.NewSelector().Add(labelExists(v1alpha1.LabelRevision))
	services := labels.NewSelector().Add(labelExists(v1alpha1.LabelService))
	opts := cache.Options{ByObject: map[client.Object]cache.ByObject{
		&appsv1.Deployment{}:          {Label: kvasir},
		&corev1.Service{}:             {Label: kvasir},
		&networkingv1.NetworkPolicy{}: {Label: kvasir},
		&corev1.ConfigMap{}:           {Label: services},
		&corev1.Pod{}:                 {Transform: StripPod},
	}}
	if namespace != "" {
		opts.DefaultNamespaces = map[string]cache.Config{namespace: {}}
	}
	return opts
}

func labelExists(key string) labels.Requirement {
	r, err := labels.NewRequirement(key, selection.Exists, nil)
	if err != nil {
		panic(err) // a constant, valid key
	}
	return *r
}

// StripPod is the cache's transform of pods: it drops what the controller
// never reads and should not hold, the containers' command, arguments and
// environment, and the managed fields. Other objects pass unchanged.
func StripPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	p.ManagedFields = nil
	for _, cs := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for i := range cs {
			cs[i].Command, cs[i].Args, cs[i].Env, cs[i].EnvFrom = nil, nil, nil, nil
		}
	}
	for i := range p.Spec.EphemeralContainers {
		c := &p.Spec.EphemeralContainers[i].EphemeralContainerCommon
		c.Command, c.Args, c.Env, c.EnvFrom = nil, nil, nil, nil
	}
	return p, nil
}
