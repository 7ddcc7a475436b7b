// Package revision owns the ModelRevision reconciler: per role, a Deployment
// (engine plus queue-proxy sidecar), or a LeaderWorkerSet for a role whose
// replicas are serving groups of several pods, and a Service built by
// resources/, and a
// status that says why a revision is not ready (unschedulable for lack of
// accelerators, image pull failure, a crashing engine, a rollout past its
// progress deadline), per group for serving groups. It detects the
// cluster's optional APIs (LeaderWorkerSet, Volcano, scheduler-plugins'
// coscheduling) through discovery while it runs: LeaderWorkerSet
// installed later is watched without a restart; Volcano, when served,
// schedules the groups' pods, and otherwise coscheduling does: the
// groups' pods are created behind a scheduling gate, and the reconciler
// makes each whole group's PodGroup, labels its pods and ungates them
// (podgroups.go).
package revision
