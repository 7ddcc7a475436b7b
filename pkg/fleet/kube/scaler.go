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

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
)

// Scaler scales a revision role on Kubernetes: one Deployment per
// accelerator variant (names.Deployment), each through its scale
// subresource, as a HorizontalPodAutoscaler would.
type Scaler struct {
	// Client reads the revision and its Deployments (a cache will do) and
	// writes their scale subresource.
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

// ScaleVariants implements fleet.VariantScaler: every Deployment of the
// role whose replicas differ from counts is scaled; variants left out go
// to zero. A Deployment failing does not stop the others: the errors are
// joined.
func (s *Scaler) ScaleVariants(ctx context.Context, key fleet.Key, counts map[string]int) error {
	rev := &v1alpha1.ModelRevision{}
	if err := s.Client.Get(ctx, client.ObjectKey{Namespace: key.Namespace, Name: key.Revision}, rev); err != nil {
		if apierrs.IsNotFound(err) {
			return fleet.ErrUnknown{Key: key}
		}
		return fmt.Errorf("scale %s: reading the revision: %w", key, err)
	}
	variants := []string{""}
	if vs := rev.Spec.AcceleratorsByCost(); len(vs) > 0 {
		variants = variants[:0]
		for _, v := range vs {
			variants = append(variants, v.Name)
		}
	}
	if err := check(key, counts, variants); err != nil {
		return err
	}
	var errs []error
	for _, v := range variants {
		if err := s.scale(ctx, key.Namespace, names.Deployment(rev, key.Role, v), counts[v]); err != nil {
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

// scale sets a Deployment's replicas through its scale subresource, when
// they differ.
func (s *Scaler) scale(ctx context.Context, namespace, name string, n int) error {
	d := &appsv1.Deployment{}
	if err := s.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, d); err != nil {
		return fmt.Errorf("getting deployment %s/%s: %w", namespace, name, err)
	}
	current := 0 // what the role's observation counts, too
	if d.Spec.Replicas != nil {
		current = int(*d.Spec.Replicas)
	}
	if current == n {
		return nil
	}
	sc := &autoscalingv1.Scale{}
	if err := s.Client.SubResource("scale").Get(ctx, d, sc); err != nil {
		return fmt.Errorf("reading the scale of deployment %s/%s: %w", d.Namespace, d.Name, err)
	}
	if int(sc.Spec.Replicas) == n {
		return nil
	}
	sc.Spec.Replicas = int32(n)
	if err := s.Client.SubResource("scale").Update(ctx, d, client.WithSubResourceBody(sc)); err != nil {
		return fmt.Errorf("scaling deployment %s/%s to %d: %w", d.Namespace, d.Name, n, err)
	}
	return nil
}
