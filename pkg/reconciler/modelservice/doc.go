// Package modelservice owns the ModelService reconciler: a new ModelRevision
// whenever the template (or the model name or adapters) changes, traffic
// resolved with pkg/traffic exactly as local mode does, status with the
// latest created and ready revisions and per-tag URLs, and garbage
// collection of old unreferenced revisions.
package modelservice
