// Package v1alpha1 holds the serving.kvasir.dev/v1alpha1 API: ModelService and
// its types, with defaults and validation shared by the controller and by
// `kvasir local`, which reads the same documents from a file.
//
// +kubebuilder:object:generate=true
// +groupName=serving.kvasir.dev
package v1alpha1
