// Package tenant holds what every runtime needs to authenticate a Tenant's
// clients (serving.kvasir.dev/v1alpha1, issue 15) without ever keeping a
// plain key: the SHA-256 digest a key is known by (Digest, ParseSHA256) and
// the resolution of a Tenant's spec.apiKeys to digests in local mode
// (ResolveKeys). Errors name the field and, for fromEnv, the variable, and
// never hold a key or a value that might be one.
package tenant
