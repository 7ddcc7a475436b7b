package autoscaling

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// RBAC (make generate): the leader writes the EndpointSlice of the
// autoscaler Service in Kvasir's namespace.
// +kubebuilder:rbac:groups=discovery.k8s.io,namespace=kvasir-serving,resources=endpointslices,verbs=get;create;update

// LeaderEndpoint makes the leading controller replica the one endpoint of a
// selector-less Service, so that activators reach the autoscaler that
// acts (as Knative's autoscaler does).
type LeaderEndpoint struct {
	Namespace string
	Service   string // e.g. "autoscaler"
	IP        string // this pod's IP
	Port      int32
	PortName  string // the Service port's name, e.g. "http"
}

// publish writes the EndpointSlice <service>-leader.
func (e *LeaderEndpoint) publish(ctx context.Context, c client.Client, r client.Reader) error {
	if e.IP == "" {
		return fmt.Errorf("autoscaler endpoint: this pod's IP is unknown (set POD_IP from status.podIP)")
	}
	name, port, proto := e.PortName, e.Port, corev1.ProtocolTCP
	addrType := discoveryv1.AddressTypeIPv4
	if strings.Contains(e.IP, ":") {
		addrType = discoveryv1.AddressTypeIPv6
	}
	ready := true
	want := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: e.Service + "-leader", Namespace: e.Namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: e.Service,
				discoveryv1.LabelManagedBy: "kvasir-controller"}},
		AddressType: addrType,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{e.IP}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	have := &discoveryv1.EndpointSlice{}
	switch err := r.Get(ctx, client.ObjectKeyFromObject(want), have); {
	case apierrs.IsNotFound(err):
		if err := c.Create(ctx, want); err != nil {
			return fmt.Errorf("autoscaler endpoint: creating %s: %w", want.Name, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("autoscaler endpoint: %w", err)
	}
	have.Labels, have.AddressType, have.Endpoints, have.Ports = want.Labels, want.AddressType, want.Endpoints, want.Ports
	if err := c.Update(ctx, have); err != nil {
		return fmt.Errorf("autoscaler endpoint: updating %s: %w", want.Name, err)
	}
	return nil
}
