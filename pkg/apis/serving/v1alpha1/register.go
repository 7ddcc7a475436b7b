package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Group and version of the API.
const (
	GroupName = "serving.kvasir.dev"
	Version   = "v1alpha1"
)

// SchemeGroupVersion is the group version of these types.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: Version}

// Kind names.
const (
	KindModelService = "ModelService"
)
