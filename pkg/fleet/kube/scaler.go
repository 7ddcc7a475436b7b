package kube

import (
	"context"
	"errors"
	"fmt"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
)

// Scaler scales a revision role on Kubernetes: one Deployment per
// accelerator variant (names.Deployment), or for a role of serving groups
// one LeaderWorkerSet (names.LeaderWorkerSet, whose replicas are groups),
// each through its scale subresource, as a HorizontalPodAutoscaler would.
type Scaler struct {
	// Client reads the revision and its Deployments and LeaderWorkerSets
	// (a cache will do) and writes their scale subresource.
	Client client.Client
}

var (
	_ fleet.VariantScaler = (*Scaler)(nil)
	_ fleet.Scaler        = (*Scaler)(nil)
)

// Scale implements fleet.Scaler for a role without accelerator variants.
func (s *Scaler) Scale(ctx context.Context, key fleet.Key, n int) error {
	return s.ScaleVariants(ctx, key, map[string]int{"": n})
}

// ScaleVariants implements fleet.VariantScaler: every Deployment (or
// LeaderWorkerSet: counts are then groups) of the role whose replicas
// differ from counts is scaled; variants left out go to zero. One failing
// does not stop the others: the errors are joined.
func (s *Scaler) ScaleVariants(ctx context.Context, key fleet.Key, counts map[string]int) error {
	rev := &v1alpha1.ModelRevision{}
	if err := s.Client.Get(ctx, client.ObjectKey{Namespace: key.Namespace, Name: key.Revision}, rev); err != nil {
		if apierrs.IsNotFound(err) {
			return fleet.ErrUnknown{Key: key}
		}
		return fmt.Errorf("scale %s: reading the revision: %w", key, err)
	}
	vs := resources.Variants(rev)
	variants := make([]string, len(vs))
	for i, v := range vs {
		if v != nil {
			variants[i] = v.Name
		}
	}
	if err := check(key, counts, variants); err != nil {
		return err
	}
	var errs []error
	for i, v := range vs {
		var err error
		if resources.Grouped(rev, key.Role, v) {
			err = s.scale(ctx, &lwsv1.LeaderWorkerSet{}, "leader worker set", key.Namespace,
				names.LeaderWorkerSet(rev, key.Role, variants[i]), counts[variants[i]])
		} else {
			err = s.scale(ctx, &appsv1.Deployment{}, "deployment", key.Namespace,
				names.Deployment(rev, key.Role, variants[i]), counts[variants[i]])
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// check refuses negative counts and counts for variants the role lacks.
func check(key fleet.Key, counts map[string]int, variants []string) error {
	for v, n := range counts {
		switch {
		case n < 0:
			return fmt.Errorf("scale %s: negative replicas %d for variant %q", key, n, v)
		case n > 0 && !slices.Contains(variants, v):
			return fmt.Errorf("scale %s: no accelerator variant %q", key, v)
		}
	}
	return nil
}

// scale sets the replicas of a Deployment or LeaderWorkerSet (obj, of
// that kind, read into) through its scale subresource, when they differ.
func (s *Scaler) scale(ctx context.Context, obj client.Object, kind, namespace, name string, n int) error {
	if err := s.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, obj); err != nil {
		return fmt.Errorf("getting %s %s/%s: %w", kind, namespace, name, err)
	}
	var replicas *int32 // what the role's observation counts, too
	switch o := obj.(type) {
	case *appsv1.Deployment:
		replicas = o.Spec.Replicas
	case *lwsv1.LeaderWorkerSet:
		replicas = o.Spec.Replicas
	}
	if replicas != nil && int(*replicas) == n {
		return nil
	}
	sc := &autoscalingv1.Scale{}
	if err := s.Client.SubResource("scale").Get(ctx, obj, sc); err != nil {
		return fmt.Errorf("reading the scale of %s %s/%s: %w", kind, namespace, name, err)
	}
	if int(sc.Spec.Replicas) == n {
		return nil
	}
	sc.Spec.Replicas = int32(n)
	if err := s.Client.SubResource("scale").Update(ctx, obj, client.WithSubResourceBody(sc)); err != nil {
		return fmt.Errorf("scaling %s %s/%s to %d: %w", kind, namespace, name, n, err)
	}
	return nil
}
