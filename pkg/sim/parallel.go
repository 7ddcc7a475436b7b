package sim

import (
	"flag"
	"fmt"
	"time"
)

// maxParallel bounds each parallel size, their product and the group size
// (the API's v1alpha1.MaxParallelSize).
const maxParallel = 1024

// maxEngineKVBlocks bounds the KV blocks of all data-parallel ranks
// together: the simulator keeps them in one table.
const maxEngineKVBlocks = 1 << 24

// Parallel is the engine's parallelism, with vLLM's flags. It changes the
// speed of a step and the engine's capacity (see stepDuration and
// docs/simulator.md, "Parallelism"); sizes are at least 1.
type Parallel struct {
	// Tensor is the tensor-parallel size (--tensor-parallel-size, -tp).
	Tensor int
	// Pipeline is the pipeline-parallel size (--pipeline-parallel-size, -pp).
	Pipeline int
	// Data is the data-parallel size (--data-parallel-size, -dp).
	Data int
	// Expert is expert parallelism (--enable-expert-parallel): accepted,
	// with no effect on the speed model.
	Expert bool
}

// registerFlags registers the parallelism flags, with vLLM's short aliases.
func (p *Parallel) registerFlags(fs *flag.FlagSet) {
	for _, f := range []struct {
		name, alias, usage string
		v                  *int
	}{
		{"tensor-parallel-size", "tp", "tensor-parallel size: divides a step's compute, adds its all-reduces", &p.Tensor},
		{"pipeline-parallel-size", "pp", "pipeline-parallel size: adds --pp-stage-latency per stage boundary to every step", &p.Pipeline},
		{"data-parallel-size", "dp", "data-parallel size: this many ranks, each with --max-num-seqs sequences and --kv-blocks blocks", &p.Data},
	} {
		fs.IntVar(f.v, f.name, *f.v, f.usage)
		fs.IntVar(f.v, f.alias, *f.v, "alias of --"+f.name)
	}
	fs.BoolVar(&p.Expert, "enable-expert-parallel", p.Expert, "expert parallelism (accepted; no effect on the speed model)")
}

// accelerators is tensor × pipeline × data.
func (p Parallel) accelerators() int64 {
	return int64(p.Tensor) * int64(p.Pipeline) * int64(p.Data)
}

// data is the data-parallel size, at least 1.
func (p Parallel) data() int { return max(p.Data, 1) }

// validateParallel checks the parallel sizes.
func (c Config) validateParallel(p *flagProblems) {
	ok := true
	for _, f := range []struct {
		name string
		v    int
	}{{"tensor-parallel-size", c.Parallel.Tensor}, {"pipeline-parallel-size", c.Parallel.Pipeline}, {"data-parallel-size", c.Parallel.Data}} {
		if f.v < 1 || f.v > maxParallel {
			p.bad(f.name, f.v, fmt.Sprintf("must be in 1..%d", maxParallel))
			ok = false
		}
	}
	if !ok {
		return
	}
	if acc := c.Parallel.accelerators(); acc > maxParallel {
		p.bad("tensor-parallel-size", c.Parallel.Tensor, fmt.Sprintf("tensor × pipeline × data is %d, more than %d", acc, maxParallel))
	}
	if c.Parallel.Expert && c.Parallel.Tensor*c.Parallel.Data < 2 {
		p.bad("enable-expert-parallel", true, "needs tensor × data parallel sizes above 1")
	}
	if c.BlockSize >= 1 && c.KVBlocks >= 0 && int64(c.NumKVBlocks())*int64(c.Parallel.Data) > maxEngineKVBlocks {
		p.bad("data-parallel-size", c.Parallel.Data, fmt.Sprintf("--kv-blocks × data-parallel ranks must be at most %d", maxEngineKVBlocks))
	}
}

// engineKVBlocks is the KV blocks of every data-parallel rank together.
func (c Config) engineKVBlocks() int { return c.NumKVBlocks() * c.Parallel.data() }

// stepDuration is the simulated duration of one scheduler step of seqs
// sequences, decodes of them decoding one token each, computing prefill
// uncached prompt tokens, on physics ph with parallelism p. The data-parallel
// ranks split the step evenly and run it at once; with sizes of 1 it is
// the lone engine's
//
//	decode-base + decode-per-seq × seqs + prefill / prefill-tps + prefill-overhead
//
// and in general (T, P, D the sizes; ⌈x/D⌉ one rank's share)
//
//	(decode-base + decode-per-seq × ⌈seqs/D⌉) / T
//	+ ⌈prefill/D⌉ / (prefill-tps × T) + prefill-overhead   (if prefill > 0)
//	+ tp-comm-base + tp-comm-per-token × 2(T−1)/T × ⌈(decodes+prefill)/D⌉   (if T > 1)
//	+ (P − 1) × pp-stage-latency
func (p Parallel) stepDuration(ph Physics, seqs, decodes, prefill int) time.Duration {
	t, pp, d := max(p.Tensor, 1), max(p.Pipeline, 1), max(p.Data, 1)
	n, pre, tokens := ceilDiv(seqs, d), ceilDiv(prefill, d), ceilDiv(decodes+prefill, d)
	dur := (ph.DecodeBase + time.Duration(n)*ph.DecodePerSeq) / time.Duration(t)
	if pre > 0 && ph.PrefillTPS > 0 {
		dur += time.Duration(float64(pre)/(ph.PrefillTPS*float64(t))*float64(time.Second)) + ph.PrefillOverhead
	}
	if t > 1 {
		ring := 2 * float64(t-1) / float64(t)
		dur += ph.TPCommBase + time.Duration(float64(tokens)*float64(ph.TPCommPerToken)*ring)
	}
	if pp > 1 {
		dur += time.Duration(pp-1) * ph.PPStageLatency
	}
	return dur
}
