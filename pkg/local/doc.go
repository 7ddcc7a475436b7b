// Package local owns `kvasir local`: the whole platform on one machine. It
// reads ModelService documents from a file, runs the activator in-process,
// runs replicas as local processes (pkg/fleet/process), and scales them with
// a simple scaler (scale up on buffered demand, down to minScale after the
// scale-to-zero grace period).
package local
