// Package reconciler owns what the controller's reconcilers (modelservice,
// revision) share: how a Ready condition's change is told as an event.
package reconciler
