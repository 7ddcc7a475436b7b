package kube

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/tenant"
)

// Tenants on Kubernetes. The activator reads the Tenants of the namespaces
// it watches and the Secrets their secretKeyRefs name, in the Tenant's
// namespace. A key is resolved as follows: an sha256 as it stands; a
// secretKeyRef as the bytes of that key of the Secret's data, less one
// trailing newline (\n or \r\n, which `kubectl create secret
// --from-file` keeps from a file written by an editor or echo); a fromEnv
// is refused, since it names an environment variable of kvasir local. A
// Tenant with a key that does not resolve (a missing Secret or key, a
// fromEnv) is left out, with a warning naming the tenant and the field:
// its keys do not work (it fails closed) while the other tenants' do. Keys
// are never logged: the messages name fields and Secrets, never data.
// While Tenants exist and none resolves, no key works: the API is closed,
// not open (it is open only when there is no Tenant at all).
//
// The Secret informer covers the namespaces the activator watches (all of
// them without --namespace): controller-runtime's cache cannot select
// Secrets by name, so the activator's role may read every Secret there.
// The cache keeps only their data, and a Secret's change resyncs the
// tenants only when a Tenant names it.

// RBAC of the activator's tenants (make generate adds these to the
// kvasir-activator role).
// +kubebuilder:rbac:groups=serving.kvasir.dev,resources=tenants,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch

// secretRefIndex indexes Tenants by the Secrets (namespace/name) their
// keys name.
const secretRefIndex = "kvasir.secretRefs"

// errFromEnvOnKubernetes refuses a key kvasir local would read from its
// environment.
var errFromEnvOnKubernetes = errors.New("names an environment variable of kvasir local, which the activator on " +
	"Kubernetes does not read: give the key with secretKeyRef (a Secret in the Tenant's namespace) or sha256")

// secretRefs are the Secrets, as namespace/name, a Tenant's keys name.
func secretRefs(t *v1alpha1.Tenant) []string {
	var out []string
	for _, k := range t.Spec.APIKeys {
		if k.SecretKeyRef != nil {
			out = append(out, t.Namespace+"/"+k.SecretKeyRef.Name)
		}
	}
	return out
}

// keepSecretData is the cache's transform of Secrets: it keeps their
// names and data, not their labels, annotations (kubectl's
// last-applied-configuration repeats the data) or managed fields.
func keepSecretData(obj any) (any, error) {
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return obj, nil
	}
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, UID: s.UID,
		ResourceVersion: s.ResourceVersion}, Data: s.Data}, nil
}

// addTenantHandlers resyncs the tenants on every change of a Tenant, and
// of a Secret a Tenant names.
func (s *Sync) addTenantHandlers(ctx context.Context) error {
	err := s.cache.IndexField(ctx, &v1alpha1.Tenant{}, secretRefIndex, func(o client.Object) []string {
		return secretRefs(o.(*v1alpha1.Tenant))
	})
	if err != nil {
		return fmt.Errorf("indexing Tenants by Secret: %w", err)
	}
	onTenant := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.triggerTenants() },
		UpdateFunc: func(any, any) { s.triggerTenants() },
		DeleteFunc: func(any) { s.triggerTenants() },
	}
	onSecret := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.secretChanged(ctx, o) },
		UpdateFunc: func(_, o any) { s.secretChanged(ctx, o) },
		DeleteFunc: func(o any) { s.secretChanged(ctx, o) },
	}
	for obj, h := range map[client.Object]toolscache.ResourceEventHandler{&v1alpha1.Tenant{}: onTenant, &corev1.Secret{}: onSecret} {
		inf, err := s.cache.GetInformer(ctx, obj)
		if err != nil {
			return fmt.Errorf("informer for %T: %w", obj, err)
		}
		if _, err := inf.AddEventHandler(h); err != nil {
			return fmt.Errorf("handler for %T: %w", obj, err)
		}
	}
	return nil
}

// secretChanged resyncs the tenants when a Tenant names the Secret obj.
func (s *Sync) secretChanged(ctx context.Context, obj any) {
	key, err := toolscache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	var ts v1alpha1.TenantList
	if err := s.cache.List(ctx, &ts, client.MatchingFields{secretRefIndex: key}); err != nil || len(ts.Items) > 0 {
		s.triggerTenants() // on error, resync rather than miss a rotation
	}
}

func (s *Sync) triggerTenants() {
	select {
	case s.pokeTenants <- struct{}{}:
	default:
	}
}

// resyncTenants resolves every Tenant's keys and gives the target those
// that resolved.
func (s *Sync) resyncTenants(ctx context.Context) error {
	var ts v1alpha1.TenantList
	if err := s.cache.List(ctx, &ts); err != nil {
		return fmt.Errorf("listing Tenants: %w", err)
	}
	items := ts.Items
	sort.Slice(items, func(i, j int) bool { return tenantID(&items[i]) < tenantID(&items[j]) })
	problems := map[string]string{}
	var cfgs []activator.TenantConfig
	for i := range items {
		t := &items[i]
		digests, err := s.resolveKeys(ctx, t)
		if err != nil {
			problems[tenantID(t)] = err.Error()
			continue
		}
		cfgs = append(cfgs, activator.TenantConfigOf(t, digests))
	}
	cfgs = withoutSharedKeys(cfgs, problems)
	s.logTenants(cfgs, problems)
	// Tenants exist but none resolved: the API stays closed rather than
	// open to anyone, behind a key nobody holds.
	closed := len(cfgs) == 0 && len(items) > 0
	if closed {
		cfgs = []activator.TenantConfig{s.closed}
	}
	if closed && !s.wasClosed {
		s.log.Warn("no Tenant's API keys resolve: no key works until one does (the API stays closed, not open)",
			slog.Int("tenants", len(items)))
	}
	s.wasClosed = closed
	if err := s.target.SetTenants(cfgs); err != nil {
		return fmt.Errorf("tenants: %w", err)
	}
	return nil
}

func tenantID(t *v1alpha1.Tenant) string { return t.Namespace + "/" + t.Name }

// closedTenant is the tenant that keeps the API closed while Tenants exist
// and none resolves: its one key is the digest of random bytes, which no
// client holds.
func closedTenant() (activator.TenantConfig, error) {
	var secret [32]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return activator.TenantConfig{}, fmt.Errorf("random key: %w", err)
	}
	return activator.TenantConfigOf(&v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "kvasir-no-tenant-resolved"}},
		[][32]byte{sha256.Sum256(secret[:])}), nil
}

// withoutSharedKeys leaves out, with a problem each, the tenants that share
// a key with another tenant: whose a request with that key is would be
// ambiguous, so neither tenant's keys work until one of them changes.
func withoutSharedKeys(cfgs []activator.TenantConfig, problems map[string]string) []activator.TenantConfig {
	owners := map[[32]byte][]string{}
	for _, c := range cfgs {
		for _, d := range c.Keys {
			owners[d] = append(owners[d], c.Namespace+"/"+c.Name)
		}
	}
	out := cfgs[:0]
	for _, c := range cfgs {
		id := c.Namespace + "/" + c.Name
		for i, d := range c.Keys {
			if o := owners[d]; len(o) > 1 {
				problems[id] = fmt.Sprintf("spec.apiKeys[%d]: the same key as a key of tenants %s", i, strings.Join(o, ", "))
				break
			}
		}
		if _, bad := problems[id]; !bad {
			out = append(out, c)
		}
	}
	return out
}

// logTenants logs what changed since the last resync: a tenant loaded,
// left out (and why), or gone. Only Run's goroutine calls it.
func (s *Sync) logTenants(cfgs []activator.TenantConfig, problems map[string]string) {
	now := make(map[string]string, len(cfgs)+len(problems))
	for _, c := range cfgs {
		id := c.Namespace + "/" + c.Name
		if now[id] = fmt.Sprintf("loaded with %d API keys", len(c.Keys)); s.tenantStates[id] != now[id] {
			s.log.Info("Tenant loaded", slog.String("tenant", id), slog.Int("keys", len(c.Keys)))
		}
	}
	for id, p := range problems {
		if now[id] = p; s.tenantStates[id] != p {
			s.log.Warn("Tenant left out: its API keys do not work", slog.String("tenant", id), slog.String("reason", p))
		}
	}
	for id := range s.tenantStates {
		if _, ok := now[id]; !ok {
			s.log.Info("Tenant removed", slog.String("tenant", id))
		}
	}
	s.tenantStates = now
}

// resolveKeys returns the digests of a Tenant's keys, in the order of
// spec.apiKeys. Every problem is reported, each prefixed with its field
// path; no error holds a key.
func (s *Sync) resolveKeys(ctx context.Context, t *v1alpha1.Tenant) ([][32]byte, error) {
	out := make([][32]byte, 0, len(t.Spec.APIKeys))
	var errs []error
	for i, k := range t.Spec.APIKeys {
		d, field, err := s.resolveKey(ctx, t.Namespace, k)
		if err != nil {
			errs = append(errs, fmt.Errorf("spec.apiKeys[%d]%s: %w", i, field, err))
			continue
		}
		out = append(out, d)
	}
	if len(out) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("spec.apiKeys: no API key"))
	}
	return out, errors.Join(errs...)
}

// resolveKey resolves one key; it also returns the field (".secretKeyRef")
// it is about.
func (s *Sync) resolveKey(ctx context.Context, namespace string, k v1alpha1.APIKey) ([32]byte, string, error) {
	switch {
	case k.SHA256 != "" && k.SecretKeyRef == nil && k.FromEnv == "":
		d, err := tenant.ParseSHA256(k.SHA256)
		return d, ".sha256", err
	case k.SecretKeyRef != nil && k.SHA256 == "" && k.FromEnv == "":
		d, err := s.secretKey(ctx, namespace, k.SecretKeyRef)
		return d, ".secretKeyRef", err
	case k.FromEnv != "" && k.SHA256 == "" && k.SecretKeyRef == nil:
		return [32]byte{}, ".fromEnv", errFromEnvOnKubernetes
	}
	return [32]byte{}, "", errors.New("an API key sets exactly one of sha256, secretKeyRef and fromEnv")
}

// secretKey is the digest of the key a secretKeyRef names.
func (s *Sync) secretKey(ctx context.Context, namespace string, ref *v1alpha1.SecretKeySelector) ([32]byte, error) {
	var sec corev1.Secret
	name := namespace + "/" + ref.Name
	if err := s.cache.Get(ctx, client.ObjectKey{Namespace: namespace, Name: ref.Name}, &sec); err != nil {
		if apierrors.IsNotFound(err) {
			return [32]byte{}, fmt.Errorf("no Secret %s in the Tenant's namespace", name)
		}
		return [32]byte{}, fmt.Errorf("reading Secret %s: %w", name, err)
	}
	data, ok := sec.Data[ref.Key]
	if !ok {
		return [32]byte{}, fmt.Errorf("Secret %s has no key %q", name, ref.Key)
	}
	key := SecretAPIKey(data)
	switch {
	case key == "":
		return [32]byte{}, fmt.Errorf("key %q of Secret %s is empty", ref.Key, name)
	case strings.TrimSpace(key) != key:
		return [32]byte{}, fmt.Errorf("key %q of Secret %s holds an API key with leading or trailing white space, "+
			"which no client can send", ref.Key, name)
	}
	return tenant.Digest(key), nil
}

// SecretAPIKey is the API key a Secret's value holds: its bytes less one
// trailing newline (\n or \r\n), which a key file written by an editor or
// echo ends with and `kubectl create secret generic --from-file` keeps.
func SecretAPIKey(data []byte) string {
	s := string(data)
	if t, ok := strings.CutSuffix(s, "\n"); ok {
		return strings.TrimSuffix(t, "\r")
	}
	return s
}
