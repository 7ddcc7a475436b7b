// Command groups benchmarks issue 16's serving-group goals: recovery as a
// unit, whole-group placement, and fragmentation against the best packing.
//
//	go run ./test/bench/groups recovery       # ~35 s: SIGKILL a worker 5 times under load
//	go run ./test/bench/groups placement      # ~30 s: a burst asks for 5 groups where 3 fit
//	go run ./test/bench/groups fragmentation  # ~2 s: the autoscaler's pass against exhaustive packing
//
// recovery runs `kvasir local --accelerators nvidia.com/gpu=4` on
// examples/bench/groups/recovery.yaml: two serving groups of two simulator
// processes with one GPU each, under steady non-streamed OpenAI chat
// completions through the activator (--rate, 15/s). Before each kill it
// measures the engines' own start: a copy of the group's engine processes
// (argv and environment read from /proc, on fresh ports), started alone,
// to the leader's /health answering 200. It then SIGKILLs the worker of
// the group running longest and polls /kvasir/replicas every 5 ms until a
// new group is Ready, and the new leader's vllm:request_success_total
// for its first answer. Kvasir's overhead is the time to Ready less the
// engines' start (that run's, and the median of all runs: the larger
// counts). Goals: overhead under --goal (1 s) at every kill; every request
// a 200 chat completion; the other group Ready throughout.
//
// placement runs `kvasir local --accelerators nvidia.com/gpu=7` on
// examples/bench/groups/placement.yaml (groups of two processes with one
// GPU each: 3 fit, one GPU spare) and keeps 40 requests in flight for 25 s,
// which at a target of 8 a group asks for 5. Goals: at the burst's end 3
// placed and 2 unplaceable in /kvasir/replicas and in
// kvasir_revision_unplaceable_replicas; in every sample of
// /kvasir/replicas (every 20 ms) each group holding devices has all its
// processes, each with its share, no device is held twice, and at most 3
// groups hold devices; each process's CUDA_VISIBLE_DEVICES in /proc is what
// the runtime reports.
//
// fragmentation needs no processes: it drives autoscaler.Pass (the pass
// local mode runs) with each step's demand as the roles' decisions, on an
// autoscaler.Inventory whose devices a stand-in runtime allocates whole
// per group, as the process runtime does. Per step it prints the
// accelerators left idle and the groups left pending by Kvasir, by the
// best packing that keeps the groups already running (Kvasir never
// migrates one), by the best packing from scratch, and by the best packing
// when each pod must fit one node (the count model of Place sums a
// resource over nodes). The best packings are found by trying every
// placement (small inventories only). It fails when a placed group did
// not get its devices whole, when a pending group fitted what was left
// free, or when Kvasir beat a "best" packing (the search would be wrong);
// how much Kvasir strands is reported, not judged.
//
// recovery and placement build the kvasir binary into a temporary
// directory unless --kvasir names one; the platform's logs go to a
// temporary directory that is kept (and named) when the run fails, or to
// --log-dir. Each prints a table and exits 1 naming the goals it missed.
// Run them from the repository root.
package main
