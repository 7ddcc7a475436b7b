package autoscaling

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// RBAC (make generate): the report token's Secret in Kvasir's namespace,
// made once and read by name; no list or watch, no other Secret.
// (Creation cannot be limited to a name.)
// +kubebuilder:rbac:groups="",namespace=kvasir-serving,resources=secrets,verbs=create
// +kubebuilder:rbac:groups="",namespace=kvasir-serving,resources=secrets,verbs=get,resourceNames=kvasir-autoscaler-token

// The Secret holding the token activators present to report demand. The
// activators mount it (config/500-activator.yaml).
const (
	TokenSecretName = "kvasir-autoscaler-token"
	TokenSecretKey  = "token"
)

// tokenBytes is the token's entropy.
const tokenBytes = 32

// EnsureToken returns the report token of the Secret TokenSecretName in
// namespace, creating the Secret with a random token if there is none.
// Controller replicas starting together agree: the one whose create loses
// reads the winner's. c must read past any cache (a direct client): a
// cached read would list and watch every Secret. The token is never
// logged.
func EnsureToken(ctx context.Context, c client.Client, namespace string) ([]byte, error) {
	key := client.ObjectKey{Namespace: namespace, Name: TokenSecretName}
	s := &corev1.Secret{}
	err := c.Get(ctx, key, s)
	if apierrs.IsNotFound(err) {
		raw := make([]byte, tokenBytes)
		if _, err := rand.Read(raw); err != nil {
			return nil, fmt.Errorf("autoscaler token: %w", err)
		}
		s = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: TokenSecretName, Namespace: namespace,
				Labels: map[string]string{"app.kubernetes.io/name": "kvasir", "app.kubernetes.io/component": "controller"}},
			Type: corev1.SecretTypeOpaque,
			Data: map[string][]byte{TokenSecretKey: []byte(base64.RawURLEncoding.EncodeToString(raw))},
		}
		err = c.Create(ctx, s)
		if apierrs.IsAlreadyExists(err) {
			s = &corev1.Secret{}
			err = c.Get(ctx, key, s)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("autoscaler token: secret %s: %w", key, err)
	}
	token := []byte(strings.TrimSpace(string(s.Data[TokenSecretKey])))
	if len(token) == 0 {
		return nil, fmt.Errorf("autoscaler token: secret %s: no %q", key, TokenSecretKey)
	}
	return token, nil
}

// authorized tells whether r carries "Authorization: Bearer <token>",
// comparing in constant time. An empty token authorizes nothing.
func authorized(r *http.Request, token []byte) bool {
	scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || len(token) == 0 {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), token) == 1
}
