package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"sync"
	"time"
)

// Run validates cfg, sends the warm-up requests (if any) and waits for them,
// then runs the measured requests and summarises them. When ctx is cancelled
// mid-run, Run returns the partial result together with an error wrapping
// ctx's. With tenants, each tenant runs its own requests concurrently with
// its own key, and the result has a row per tenant.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(cfg.Tenants) > 0 {
		return runTenants(ctx, cfg)
	}
	cfg = cfg.Resolved()
	c := newClient(cfg)
	defer c.close()
	if cfg.Warmup > 0 {
		if err := warmup(ctx, c, cfg); err != nil {
			return nil, err
		}
	}
	w, err := NewWorkload(cfg)
	if err != nil {
		return nil, err
	}
	return runWith(ctx, c, cfg, w)
}

// RunWorkload runs the requests of w (no warm-up) under cfg's load shape and
// summarises them; cfg's workload settings and tenants are not used.
func RunWorkload(ctx context.Context, cfg Config, w Workload) (*Result, error) {
	cfg.Tenants = nil
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.Resolved()
	c := newClient(cfg)
	defer c.close()
	return runWith(ctx, c, cfg, w)
}

// warmup sends cfg.Warmup requests of the same workload kind drawn from
// another seed (so they do not pre-fill the prefix cache of the measured
// prompts), closed loop at the run's cap, and fails when every one fails.
func warmup(ctx context.Context, c *client, cfg Config) error {
	wc := cfg
	wc.NumPrompts = cfg.Warmup
	wc.Seed = int64(newRand(cfg.Seed, streamWarmup).Uint64() >> 1)
	wc.Rate, wc.Duration = 0, 0
	if wc.MaxConcurrency == 0 {
		wc.MaxConcurrency = cfg.Warmup
	}
	w, err := NewWorkload(wc)
	if err != nil {
		return err
	}
	samples, _, err := dispatch(ctx, c, wc, w)
	if err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	for _, s := range samples {
		if s.outcome == outcomeOK {
			return nil
		}
	}
	if len(samples) > 0 && samples[0].errMsg != "" {
		return fmt.Errorf("warm-up: all %d requests failed, e.g.: %s", len(samples), samples[0].errMsg)
	}
	return fmt.Errorf("warm-up: all %d requests failed", len(samples))
}

func runWith(ctx context.Context, c *client, cfg Config, w Workload) (*Result, error) {
	samples, dur, err := dispatch(ctx, c, cfg, w)
	res := summarize(cfg, samples, dur)
	res.NumPrompts = w.Len()
	if err != nil {
		return res, fmt.Errorf("bench run: %w", err)
	}
	return res, nil
}

// dispatch issues the requests of w under cfg's load shape and waits for all
// of them. It returns the samples of the issued requests in issue order and
// the time from the first arrival to the last completion.
//
// Arrival i of the open loop is due at start + the sum of the first i gaps;
// an arrival that is late (the cap was full, the machine was busy) is sent at
// once, so the schedule never drifts. An arrival that finds --max-concurrency
// requests in flight waits for a slot, and later arrivals queue behind it.
func dispatch(ctx context.Context, c *client, cfg Config, w Workload) ([]sample, time.Duration, error) {
	n := w.Len()
	samples := make([]sample, n)
	var slots chan struct{}
	if cfg.MaxConcurrency > 0 {
		slots = make(chan struct{}, cfg.MaxConcurrency)
	}
	var sched *schedule
	if cfg.Rate > 0 {
		sched = newSchedule(cfg.Rate, cfg.Arrival, cfg.Seed)
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()

	start := time.Now()
	issueCtx := ctx
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		issueCtx, cancel = context.WithDeadline(ctx, start.Add(cfg.Duration))
		defer cancel()
	}
	var (
		wg      sync.WaitGroup
		issued  int
		nextErr error
	)
loop:
	for issued < n && issueCtx.Err() == nil {
		if sched != nil {
			if wait := time.Until(start.Add(sched.next())); wait > 0 {
				timer.Reset(wait)
				select {
				case <-timer.C:
				case <-issueCtx.Done():
					break loop
				}
			}
		}
		if slots != nil {
			select {
			case slots <- struct{}{}:
			case <-issueCtx.Done():
				break loop
			}
		}
		req, err := w.Next(issueCtx)
		if err != nil {
			if slots != nil {
				<-slots
			}
			if !errors.Is(err, io.EOF) && issueCtx.Err() == nil {
				nextErr = fmt.Errorf("workload: %w", err)
			}
			break
		}
		i := issued
		issued++
		wg.Go(func() {
			s, answer := c.do(ctx, req)
			samples[i] = s
			var err error
			if s.outcome != outcomeOK {
				err = errors.New(s.errMsg)
			}
			w.Complete(req, answer, err)
			if slots != nil {
				<-slots
			}
		})
	}
	wg.Wait()
	dur := time.Since(start)
	if nextErr == nil && ctx.Err() != nil {
		nextErr = ctx.Err()
	}
	return samples[:issued], dur, nextErr
}

// schedule yields the arrival offsets of the open loop: offset i is the sum
// of the first i gaps (offset 0 is 0).
type schedule struct {
	rate    float64
	poisson bool
	rng     *rand.Rand
	i       int
	sum     float64 // seconds, poisson
}

func newSchedule(rate float64, arrival string, seed int64) *schedule {
	return &schedule{rate: rate, poisson: arrival == ArrivalPoisson, rng: newRand(seed, streamArrivals)}
}

// next returns the offset of the next arrival from the start of the run.
func (s *schedule) next() time.Duration {
	i := s.i
	s.i++
	if !s.poisson {
		return seconds(float64(i) / s.rate)
	}
	at := s.sum
	s.sum += s.rng.ExpFloat64() / s.rate
	return seconds(at)
}

func seconds(s float64) time.Duration { return time.Duration(math.Round(s * float64(time.Second))) }
