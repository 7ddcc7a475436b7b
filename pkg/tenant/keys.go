package tenant

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

// ErrMalformedSHA256 is returned (wrapped) for an sha256 that is not 64
// lowercase hexadecimal characters.
var ErrMalformedSHA256 = errors.New("must be 64 lowercase hexadecimal characters: the SHA-256 of the key, never the key")

// Digest is the SHA-256 of a key: what a Tenant's sha256 holds in
// hexadecimal, and what authentication compares.
func Digest(key string) [32]byte { return sha256.Sum256([]byte(key)) }

// ParseSHA256 decodes spec.apiKeys[].sha256 into a digest. The error never
// holds s, which may be a key written there by mistake.
func ParseSHA256(s string) ([32]byte, error) {
	var d [32]byte
	if !v1alpha1.ValidSHA256(s) {
		return d, ErrMalformedSHA256
	}
	if _, err := hex.Decode(d[:], []byte(s)); err != nil {
		return d, ErrMalformedSHA256
	}
	return d, nil
}

// ResolveKeys returns the digests of a Tenant's keys in local mode, in the
// order of spec.apiKeys: an sha256 as it is, a fromEnv key read with getenv
// (os.LookupEnv in kvasir local) and hashed. A secretKeyRef is refused: the
// local platform has no Secrets. Every problem is reported, each prefixed
// with its field path (spec.apiKeys[1].fromEnv: ...); no error holds a key.
func ResolveKeys(t *v1alpha1.Tenant, getenv func(string) (string, bool)) ([][32]byte, error) {
	out := make([][32]byte, 0, len(t.Spec.APIKeys))
	var errs []error
	for i, k := range t.Spec.APIKeys {
		d, field, err := resolveKey(k, getenv)
		if err != nil {
			errs = append(errs, fmt.Errorf("spec.apiKeys[%d]%s: %w", i, field, err))
			continue
		}
		out = append(out, d)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// resolveKey resolves one key; on error it also returns the field (".fromEnv")
// the error is about.
func resolveKey(k v1alpha1.APIKey, getenv func(string) (string, bool)) ([32]byte, string, error) {
	switch {
	case k.SHA256 != "" && k.SecretKeyRef == nil && k.FromEnv == "":
		d, err := ParseSHA256(k.SHA256)
		return d, ".sha256", err
	case k.FromEnv != "" && k.SHA256 == "" && k.SecretKeyRef == nil:
		key, err := fromEnv(k.FromEnv, getenv)
		return Digest(key), ".fromEnv", err
	case k.SecretKeyRef != nil && k.SHA256 == "" && k.FromEnv == "":
		return [32]byte{}, ".secretKeyRef", errors.New("kvasir local has no Secrets: give the key with fromEnv (an environment variable of kvasir local) or sha256")
	}
	return [32]byte{}, "", errors.New("an API key sets exactly one of sha256, secretKeyRef and fromEnv")
}

// fromEnv reads a key from the environment variable name. A key with
// leading or trailing white space is refused: HTTP strips it from header
// values, so no client could send it.
func fromEnv(name string, getenv func(string) (string, bool)) (string, error) {
	v, ok := getenv(name)
	switch {
	case !ok:
		return "", fmt.Errorf("environment variable %s is not set", name)
	case v == "":
		return "", fmt.Errorf("environment variable %s is empty", name)
	case strings.TrimSpace(v) != v:
		return "", fmt.Errorf("environment variable %s holds a key with leading or trailing white space", name)
	}
	return v, nil
}
