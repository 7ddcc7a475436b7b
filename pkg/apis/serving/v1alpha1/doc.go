// Package v1alpha1 holds the serving.kvasir.dev/v1alpha1 API: ModelService
// (what users write) and ModelRevision (the immutable snapshot the controller
// cuts from a ModelService whenever what runs in its pods changes), with
// defaults, validation and status lifecycle shared by the controller and by
// `kvasir local`, which reads the same ModelService documents from a file.
//
// Layout follows Knative: <kind>_types.go (the schema, with the kubebuilder
// markers controller-gen turns into config/300-*.yaml), <kind>_defaults.go,
// <kind>_validation.go (Go validation with field paths; the CRDs carry the
// same rules as OpenAPI bounds and CEL where they fit, so a cluster without
// webhooks rejects the same objects) and <kind>_lifecycle.go (conditions).
// zz_generated.deepcopy.go and the CRDs are generated: run `make generate`
// after changing a type or a marker; TestGeneratedFilesUpToDate fails when
// they are stale.
//
// +kubebuilder:object:generate=true
// +groupName=serving.kvasir.dev
package v1alpha1
