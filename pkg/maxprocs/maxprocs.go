package maxprocs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime"
	"strconv"
	"time"
)

// Config tunes Run. Its zero value takes the defaults below.
type Config struct {
	// Max is the most Ps Run gives the process. Zero: the runtime's
	// GOMAXPROCS when Run starts (the number of CPUs, or a cgroup CPU
	// limit's share of them on Go 1.25 and later).
	Max int
	// Interval is how often the process's CPU time is read (default 250ms).
	Interval time.Duration
	// PerP is the CPU, in cores, that one P should carry at most: Run gives
	// the process ceil(use/PerP) Ps (default 0.5, so one P serves until the
	// process uses half a core; beyond that, requests would queue behind
	// each other on it).
	PerP float64
	// Hold is how many reads in a row must find the use below
	// LowerAt*PerP per P before Run takes Ps away (default 20: five seconds).
	Hold int
	// LowerAt is the fraction of PerP under which Ps are taken back
	// (default 0.75): the gap keeps Run from switching back and forth at
	// the boundary.
	LowerAt float64
}

// saturated is the share of its Ps a process must use for Run to give it
// Max at once: on P Ps the use cannot show more than P cores, so
// ceil(use/PerP) alone could only double the Ps a read.
const saturated = 0.9

// withDefaults fills the zero fields but Max, which run takes from the
// runtime it fits.
func (c Config) withDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = 250 * time.Millisecond
	}
	if c.PerP <= 0 {
		c.PerP = 0.5
	}
	if c.Hold <= 0 {
		c.Hold = 20
	}
	if c.LowerAt <= 0 {
		c.LowerAt = 0.75
	}
	return c
}

// Validate reports the fields out of range, by name.
func (c Config) Validate() error {
	var errs []error
	if c.Max < 0 {
		errs = append(errs, fmt.Errorf("Max: must be >= 0, got %d", c.Max))
	}
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("Interval: must be >= 0, got %s", c.Interval))
	}
	if !(c.PerP >= 0 && c.PerP <= 1) { // NaN fails too
		errs = append(errs, fmt.Errorf("PerP: must be in [0, 1], got %v", c.PerP))
	}
	if c.Hold < 0 {
		errs = append(errs, fmt.Errorf("Hold: must be >= 0, got %d", c.Hold))
	}
	if !(c.LowerAt >= 0 && c.LowerAt <= 1) {
		errs = append(errs, fmt.Errorf("LowerAt: must be in [0, 1], got %v", c.LowerAt))
	}
	return errors.Join(errs...)
}

// Pinned reports whether the operator pinned GOMAXPROCS in the environment,
// as the runtime reads it: a positive integer (the runtime ignores any
// other value, and so does Pinned).
func Pinned() bool {
	n, err := strconv.ParseInt(os.Getenv("GOMAXPROCS"), 10, 32)
	return err == nil && n > 0
}

// Run sets GOMAXPROCS to one P and then follows the process's CPU use until
// ctx ends, when it gives the runtime back its default (and the default's
// automatic updates, which setting GOMAXPROCS turns off meanwhile: a change
// of the cgroup CPU limit while Run runs is not followed). It returns at
// once, having changed nothing, when cfg is invalid (the error), when
// GOMAXPROCS is pinned in the environment, when Max is one, or when the
// platform has no getrusage. One Run per process: two would undo each
// other's settings.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	return run(ctx, cfg, log, realRuntime{})
}

// Start runs Run with the zero Config in a goroutine of its own until
// ctx ends or the returned stop is called; stop returns once Run did (the
// runtime's default is back). For a binary's main: a process's one Run.
func Start(ctx context.Context, log *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = Run(ctx, Config{}, log) // the zero Config is valid
	}()
	return func() { cancel(); <-done }
}

// procs is what Run reads and sets; realRuntime is the process's.
type procs interface {
	pinned() bool
	gomaxprocs(n int) int
	setDefault()
	cpu() (time.Duration, error)
	now() time.Time
	ticks(d time.Duration) (<-chan time.Time, func())
}

type realRuntime struct{}

func (realRuntime) pinned() bool                { return Pinned() }
func (realRuntime) gomaxprocs(n int) int        { return runtime.GOMAXPROCS(n) }
func (realRuntime) setDefault()                 { runtime.SetDefaultGOMAXPROCS() }
func (realRuntime) cpu() (time.Duration, error) { return cpuTime() }
func (realRuntime) now() time.Time              { return time.Now() }
func (realRuntime) ticks(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

var _ procs = realRuntime{}

func run(ctx context.Context, cfg Config, log *slog.Logger, rt procs) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("maxprocs: %w", err)
	}
	if rt.pinned() {
		log.Info("GOMAXPROCS is set in the environment: not fitting it", slog.Int("procs", rt.gomaxprocs(0)))
		return nil
	}
	if cfg.Max <= 0 {
		cfg.Max = rt.gomaxprocs(0)
	}
	cfg = cfg.withDefaults()
	if cfg.Max <= 1 {
		return nil
	}
	last, err := rt.cpu()
	if err != nil {
		log.Info("not fitting GOMAXPROCS", slog.Any("error", err))
		return nil
	}
	defer rt.setDefault()
	rt.gomaxprocs(1)
	log.Info("fitting GOMAXPROCS to the CPU use", slog.Int("max", cfg.Max), slog.Duration("interval", cfg.Interval))
	ticks, stop := rt.ticks(cfg.Interval)
	defer stop()
	s := state{procs: 1}
	lastAt := rt.now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticks:
		}
		used, err := rt.cpu()
		if err != nil {
			return nil // getrusage(RUSAGE_SELF) fails only on a bad pointer
		}
		at := rt.now() // when cpu was read, not when the tick was due: late exactly when busy
		if !at.After(lastAt) {
			continue
		}
		use := (used - last).Seconds() / at.Sub(lastAt).Seconds()
		last, lastAt = used, at
		if n := s.procs; s.step(use, cfg) != n {
			rt.gomaxprocs(s.procs)
			log.Debug("GOMAXPROCS fitted", slog.Int("procs", s.procs), slog.Float64("cpuCores", math.Round(use*100)/100))
		}
	}
}

// state is Run's decision state, apart from the runtime so that tests can
// drive it.
type state struct {
	procs int // Ps given
	below int // reads in a row that asked for fewer Ps
	most  int // the most Ps those reads asked for
}

// step takes one read of the CPU use (cores) and returns the Ps to give.
// More Ps are given at once (Max when the Ps given are nearly all busy);
// fewer only after cfg.Hold reads in a row, as many as the busiest of them
// asked for.
func (s *state) step(use float64, cfg Config) int {
	up := clamp(int(math.Ceil(use/cfg.PerP)), cfg.Max)
	if use >= saturated*float64(s.procs) {
		up = cfg.Max
	}
	if up > s.procs {
		s.procs, s.below = up, 0
		return s.procs
	}
	down := clamp(int(math.Ceil(use/(cfg.PerP*cfg.LowerAt))), cfg.Max)
	if down >= s.procs {
		s.below = 0
		return s.procs
	}
	if s.below == 0 {
		s.most = down
	}
	s.most = max(s.most, down)
	if s.below++; s.below >= cfg.Hold {
		s.procs, s.below = s.most, 0
	}
	return s.procs
}

func clamp(n, most int) int {
	return max(1, min(n, most))
}
