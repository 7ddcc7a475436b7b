package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

// Group and version of the API.
const (
	GroupName = "serving.kvasir.dev"
	Version   = "v1alpha1"
)

// Kind names.
const (
	KindModelService = "ModelService"
)

var (
	// SchemeGroupVersion is the group version of these types.
	SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: Version}

	// SchemeBuilder adds this group's types to a scheme. The types are
	// registered with it once their deep-copy functions are generated
	// (controller-gen, with the control plane).
	SchemeBuilder = &scheme.Builder{GroupVersion: SchemeGroupVersion}

	// AddToScheme adds this group to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
