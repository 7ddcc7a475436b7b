// Package engine turns a revision's engine spec into the command line its
// engine runs with: one place for kvasir local and Kubernetes alike, so
// that the two runtimes start vLLM, SGLang, the simulator and custom
// engines the same way. docs/engines.md has the table; the golden files in
// testdata/ hold every command line as data.
//
// The order of arguments is fixed: the command, the model where the engine
// takes it first, the template's arguments, the role's arguments, then the
// flags the platform owns (address, port, served name, caching, metrics,
// LoRA, then parallelism and the pod's rank in a serving group: group.go). vLLM's and SGLang's parsers (argparse) and the simulator's (Go's
// flag) let the last occurrence of a flag win, so the platform's flags hold
// whatever the template says.
package engine
