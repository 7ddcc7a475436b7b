package main

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/testing/promtest"
	"github.com/kvasir-serving/kvasir/test/bench/internal/localrun"
)

// revSample is one service's state at one instant: /kvasir/replicas
// (unified or decode role) and the activator's load gauges.
type revSample struct {
	Desired     int `json:"desired"`
	Ready       int `json:"ready"`
	Unplaceable int `json:"unplaceable,omitempty"`
	Replicas    int `json:"replicas"` // processes, starting and stopping included
	// Concurrency is buffered + in flight at the activator: what the
	// decider's concurrency signal sees.
	Concurrency float64 `json:"concurrency"`
	Buffered    float64 `json:"buffered,omitempty"`
	// The busiest replica: requests its queue-proxy is proxying, and its
	// engine's waiting queue (from the stats the queue-proxies report).
	MaxReplicaInFlight int     `json:"maxReplicaInFlight,omitempty"`
	MaxEngineWaiting   float64 `json:"maxEngineWaiting,omitempty"`
}

// sample is one poll of the platform.
type sample struct {
	At   time.Time            `json:"-"`
	T    float64              `json:"t"` // seconds since the reference instant of the report (negative: before)
	Revs map[string]revSample `json:"revs"`
	// With a device variable to watch (two-models): devices held by live
	// engines, and how many of them more than one engine holds.
	DevicesInUse    int `json:"devicesInUse,omitempty"`
	DeviceConflicts int `json:"deviceConflicts,omitempty"`
}

// cpuSample is the CPU used over the second before T, in cores.
type cpuSample struct {
	At       time.Time `json:"-"`
	T        float64   `json:"t"`
	Machine  float64   `json:"machine"`      // every process on the machine (other users' too)
	Engines  float64   `json:"engines"`      // the simulators
	Proxies  float64   `json:"queueProxies"` // the queue-proxies
	Platform float64   `json:"platform"`     // kvasir local: activator, scaler
	Harness  float64   `json:"harness"`      // this program: the load generator
}

// ours is the CPU of the benchmark's own processes.
func (c cpuSample) ours() float64 { return c.Engines + c.Proxies + c.Platform + c.Harness }

// sampler polls /kvasir/replicas and /metrics every interval, and the CPU
// of the platform's processes every second.
type sampler struct {
	p         *localrun.Platform
	every     time.Duration
	deviceEnv string // e.g. CUDA_VISIBLE_DEVICES: check no device is held twice

	mu      sync.Mutex
	samples []sample
	cpu     []cpuSample
	fails   int
	lastErr error

	stopCh chan struct{}
	done   chan struct{}
}

func startSampler(p *localrun.Platform, every time.Duration, deviceEnv string) *sampler {
	s := &sampler{p: p, every: every, deviceEnv: deviceEnv, stopCh: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	return s
}

func (s *sampler) run() {
	defer close(s.done)
	acct := newCPUAccount(s.p.PID())
	t := time.NewTicker(s.every)
	defer t.Stop()
	lastCPU := time.Time{}
	pids := map[int]string{}
	for {
		now := time.Now()
		st, err := s.p.Replicas()
		if err != nil {
			s.mu.Lock()
			s.fails++
			s.lastErr = err
			s.mu.Unlock()
		} else {
			load := scrapeLoad(s.p.Admin + "/metrics")
			smp := sample{At: now, Revs: map[string]revSample{}}
			held := map[string]int{}
			for _, r := range st {
				for _, rep := range r.Replicas {
					if rep.EnginePID > 0 {
						pids[rep.EnginePID] = "engine"
						if s.deviceEnv != "" {
							for _, d := range strings.Split(procEnv(rep.EnginePID, s.deviceEnv), ",") {
								if d != "" {
									held[d]++
								}
							}
						}
					}
					if rep.ProxyPID > 0 {
						pids[rep.ProxyPID] = "proxy"
					}
				}
				if r.Role != "unified" && r.Role != "decode" {
					continue
				}
				l := load[r.Namespace+"/"+r.Service]
				rs := revSample{Desired: r.Desired, Ready: r.Ready, Unplaceable: r.Unplaceable,
					Replicas: len(r.Replicas), Concurrency: l.inFlight + l.buffered, Buffered: l.buffered}
				for _, rep := range r.Replicas {
					if rep.Stats != nil {
						rs.MaxReplicaInFlight = max(rs.MaxReplicaInFlight, rep.Stats.InFlight)
						rs.MaxEngineWaiting = max(rs.MaxEngineWaiting, rep.Stats.Engine.Waiting)
					}
				}
				smp.Revs[r.Service] = rs
			}
			smp.DevicesInUse = len(held)
			for _, n := range held {
				if n > 1 {
					smp.DeviceConflicts++
				}
			}
			s.mu.Lock()
			s.samples = append(s.samples, smp)
			s.mu.Unlock()
		}
		if now.Sub(lastCPU) >= time.Second {
			if c, ok := acct.sample(now, pids); ok {
				s.mu.Lock()
				s.cpu = append(s.cpu, c)
				s.mu.Unlock()
			}
			lastCPU = now
		}
		select {
		case <-s.stopCh:
			return
		case <-t.C:
		}
	}
}

// stop ends the sampling and returns the timeline.
func (s *sampler) stop() ([]sample, []cpuSample) {
	close(s.stopCh)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fails > 0 {
		fmt.Fprintf(os.Stderr, "warning: %d polls of /kvasir/replicas failed (last: %v)\n", s.fails, s.lastErr)
	}
	return s.samples, s.cpu
}

type svcLoad struct{ inFlight, buffered float64 }

// scrapeLoad returns the activator's in-flight and buffered requests per
// namespace/service (summed over roles and revisions).
func scrapeLoad(url string) map[string]svcLoad {
	out := map[string]svcLoad{}
	fams, err := promtest.Scrape(url)
	if err != nil {
		return out
	}
	for name, f := range fams {
		if name != "kvasir_activator_in_flight_requests" && name != "kvasir_activator_buffered_requests" {
			continue
		}
		for _, m := range f.GetMetric() {
			var ns, svc string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "namespace":
					ns = l.GetValue()
				case "service":
					svc = l.GetValue()
				}
			}
			svc = ns + "/" + svc
			v := out[svc]
			if name == "kvasir_activator_in_flight_requests" {
				v.inFlight += m.GetGauge().GetValue()
			} else {
				v.buffered += m.GetGauge().GetValue()
			}
			out[svc] = v
		}
	}
	return out
}

// procEnv reads one variable of a live process's environment ("" when the
// process is gone or a zombie).
func procEnv(pid int, name string) string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return ""
	}
	for _, kv := range strings.Split(string(data), "\x00") {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v
		}
	}
	return ""
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on every
// Linux architecture Go runs on).
const clockTicks = 100

// cpuAccount turns cumulative CPU times into per-second usage by group.
type cpuAccount struct {
	platformPID int
	last        map[int]float64 // pid -> CPU seconds at the last reading (kept after exit)
	group       map[int]string
	prevTotals  map[string]float64
	prevMachine [2]float64 // busy, total jiffies
	prevAt      time.Time
}

func newCPUAccount(platformPID int) *cpuAccount {
	return &cpuAccount{platformPID: platformPID, last: map[int]float64{}, group: map[int]string{}}
}

func (a *cpuAccount) sample(now time.Time, pids map[int]string) (cpuSample, bool) {
	a.group[a.platformPID] = "platform"
	a.group[os.Getpid()] = "harness"
	for pid, g := range pids {
		a.group[pid] = g
	}
	for pid := range a.group {
		if v, ok := procCPU(pid); ok {
			a.last[pid] = v
		}
	}
	totals := map[string]float64{}
	for pid, v := range a.last {
		totals[a.group[pid]] += v
	}
	busy, total := machineCPU()
	defer func() { a.prevTotals, a.prevMachine, a.prevAt = totals, [2]float64{busy, total}, now }()
	if a.prevTotals == nil {
		return cpuSample{}, false
	}
	dt := now.Sub(a.prevAt).Seconds()
	if dt <= 0 {
		return cpuSample{}, false
	}
	d := func(g string) float64 { return max(0, totals[g]-a.prevTotals[g]) / dt }
	c := cpuSample{At: now, Engines: d("engine"), Proxies: d("proxy"), Platform: d("platform"), Harness: d("harness")}
	if dTotal := total - a.prevMachine[1]; dTotal > 0 {
		c.Machine = (busy - a.prevMachine[0]) / dTotal * float64(runtime.NumCPU())
	}
	return c, true
}

// procCPU returns a process's user + system CPU seconds.
func procCPU(pid int) (float64, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state); utime is field 14, stime 15
	if len(f) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return (u + st) / clockTicks, true
}

// machineCPU returns the busy and total jiffies of all CPUs.
func machineCPU() (busy, total float64) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, 0
	}
	fields := strings.Fields(sc.Text())
	for i, v := range fields[1:] {
		n, _ := strconv.ParseFloat(v, 64)
		if i >= 8 { // guest times are already in user and nice
			break
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// timeline is the sampled history of one run, with times relative to ref.
type timeline struct {
	ref     time.Time
	samples []sample
	cpu     []cpuSample
}

func newTimeline(ref time.Time, samples []sample, cpu []cpuSample) *timeline {
	for i := range samples {
		samples[i].T = round3(samples[i].At.Sub(ref).Seconds())
	}
	for i := range cpu {
		cpu[i].T = round3(cpu[i].At.Sub(ref).Seconds())
	}
	return &timeline{ref: ref, samples: samples, cpu: cpu}
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// first returns the time (since ref) of the first sample in [from, to] whose
// state of svc satisfies cond.
func (tl *timeline) first(svc string, from, to time.Time, cond func(revSample) bool) (float64, bool) {
	for _, s := range tl.samples {
		if s.At.Before(from) || s.At.After(to) {
			continue
		}
		if r, ok := s.Revs[svc]; ok && cond(r) {
			return s.At.Sub(tl.ref).Seconds(), true
		}
	}
	return 0, false
}

// peak returns the largest value of f over [from, to].
func (tl *timeline) peak(svc string, from, to time.Time, f func(revSample) float64) float64 {
	best := 0.0
	for _, s := range tl.samples {
		if s.At.Before(from) || s.At.After(to) {
			continue
		}
		best = max(best, f(s.Revs[svc]))
	}
	return best
}

// mean returns the mean of f over the samples in [from, to].
func (tl *timeline) mean(svc string, from, to time.Time, f func(revSample) float64) float64 {
	sum, n := 0.0, 0
	for _, s := range tl.samples {
		if s.At.Before(from) || s.At.After(to) {
			continue
		}
		sum += f(s.Revs[svc])
		n++
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// change is one change of desired replicas.
type change struct {
	T    float64 `json:"t"`
	From int     `json:"from"`
	To   int     `json:"to"`
}

// changes returns the changes of desired replicas of svc within (from, to].
func (tl *timeline) changes(svc string, from, to time.Time) []change {
	var out []change
	prev, have := 0, false
	for _, s := range tl.samples {
		if s.At.After(to) {
			break
		}
		r, ok := s.Revs[svc]
		if !ok {
			continue
		}
		if have && r.Desired != prev && s.At.After(from) {
			out = append(out, change{T: round3(s.At.Sub(tl.ref).Seconds()), From: prev, To: r.Desired})
		}
		prev, have = r.Desired, true
	}
	return out
}

// reversals counts changes of direction (up then down, or down then up).
func reversals(cs []change) int {
	n, dir := 0, 0
	for _, c := range cs {
		d := 1
		if c.To < c.From {
			d = -1
		}
		if dir != 0 && d != dir {
			n++
		}
		dir = d
	}
	return n
}

// cpuStats returns the mean and peak of f over the CPU samples in [from, to].
func (tl *timeline) cpuStats(from, to time.Time, f func(cpuSample) float64) (mean, peak float64) {
	n := 0
	for _, c := range tl.cpu {
		if c.At.Before(from) || c.At.After(to) {
			continue
		}
		v := f(c)
		mean += v
		peak = max(peak, v)
		n++
	}
	if n > 0 {
		mean /= float64(n)
	}
	return mean, peak
}
