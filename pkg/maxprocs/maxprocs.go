package maxprocs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime"
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

func (c Config) withDefaults() Config {
	if c.Max <= 0 {
		c.Max = runtime.GOMAXPROCS(0)
	}
	if c.Interval <= 0 {
		c.Interval = 250 * time.Millisecond
	}
	if c.PerP <= 0 {
		c.PerP = 0.5
	}
	if c.Hold <= 0 {
		c.Hold = 20
	}
	if c.LowerAt <= 0 || c.LowerAt > 1 {
		c.LowerAt = 0.75
	}
	return c
}

// Validate reports a field out of range, by name.
func (c Config) Validate() error {
	var errs []error
	if c.Max < 0 {
		errs = append(errs, fmt.Errorf("max: must be >= 0, got %d", c.Max))
	}
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("interval: must be >= 0, got %s", c.Interval))
	}
	if c.PerP < 0 || c.PerP > 1 {
		errs = append(errs, fmt.Errorf("perP: must be in [0, 1], got %v", c.PerP))
	}
	if c.Hold < 0 {
		errs = append(errs, fmt.Errorf("hold: must be >= 0, got %d", c.Hold))
	}
	if c.LowerAt < 0 || c.LowerAt > 1 {
		errs = append(errs, fmt.Errorf("lowerAt: must be in [0, 1], got %v", c.LowerAt))
	}
	return errors.Join(errs...)
}

// Pinned reports whether the operator set GOMAXPROCS in the environment.
func Pinned() bool { return os.Getenv("GOMAXPROCS") != "" }

// Run sets GOMAXPROCS to one P and then follows the process's CPU use until
// ctx ends, when it gives the runtime back its default (and the default's
// automatic updates). It returns at once, having changed nothing, when
// GOMAXPROCS is pinned in the environment, when Max is one, or when the
// platform has no getrusage.
func Run(ctx context.Context, cfg Config, log *slog.Logger) {
	if err := cfg.Validate(); err != nil {
		log.Error("not fitting GOMAXPROCS", slog.Any("error", err))
		return
	}
	if Pinned() {
		log.Debug("GOMAXPROCS is set in the environment: not fitting it")
		return
	}
	cfg = cfg.withDefaults()
	if cfg.Max <= 1 {
		return
	}
	if _, err := cpuTime(); err != nil {
		log.Debug("not fitting GOMAXPROCS", slog.Any("error", err))
		return
	}
	defer runtime.SetDefaultGOMAXPROCS()
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	fit(ctx, cfg, log, time.Now(), t.C, cpuTime, runtime.GOMAXPROCS)
}

// fit is Run's loop, on a clock, a CPU-time reader and a GOMAXPROCS setter
// that tests can drive.
func fit(ctx context.Context, cfg Config, log *slog.Logger, start time.Time, ticks <-chan time.Time,
	cpu func() (time.Duration, error), gomaxprocs func(int) int) {
	s := state{procs: 1}
	gomaxprocs(1)
	last, err := cpu()
	if err != nil {
		return
	}
	lastAt := start
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticks:
			used, err := cpu()
			if err != nil {
				return // getrusage(RUSAGE_SELF) fails only on a bad pointer
			}
			if now.After(lastAt) {
				use := (used - last).Seconds() / now.Sub(lastAt).Seconds()
				if n := s.procs; s.step(use, cfg) != n {
					gomaxprocs(s.procs)
					log.Debug("GOMAXPROCS fitted", slog.Int("procs", s.procs), slog.Float64("cpuCores", math.Round(use*100)/100))
				}
			}
			last, lastAt = used, now
		}
	}
}

// state is Run's decision state, apart from the runtime so that tests can
// drive it.
type state struct {
	procs int // Ps given
	below int // reads in a row that asked for fewer Ps
}

// step takes one read of the CPU use (cores) and returns the Ps to give.
// More Ps are given at once; fewer only after cfg.Hold reads in a row.
func (s *state) step(use float64, cfg Config) int {
	up := clamp(int(math.Ceil(use/cfg.PerP)), cfg.Max)
	if up > s.procs {
		s.procs, s.below = up, 0
		return s.procs
	}
	down := clamp(int(math.Ceil(use/(cfg.PerP*cfg.LowerAt))), cfg.Max)
	if down >= s.procs {
		s.below = 0
		return s.procs
	}
	if s.below++; s.below >= cfg.Hold {
		s.procs, s.below = down, 0
	}
	return s.procs
}

func clamp(n, most int) int {
	return max(1, min(n, most))
}
