// Package scheduler owns how the activator picks a pod for a request: a
// Profile of filters and weighted scorers built from a ModelService's
// spec.routing.plugins, the plugins themselves, and the one place they are
// registered (Registry in plugins.go), each with typed, validated config.
//
// A decision runs on a Request parsed once by the activator: the prompt is
// rendered and hashed at most once per block size however many plugins look
// at it.
package scheduler
