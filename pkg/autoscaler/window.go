package autoscaler

import "time"

// window averages a signal over a sliding time window, in one-second
// buckets (the resolution of the stats streams).
type window struct {
	buckets []bucket
}

type bucket struct {
	sec int64 // unix second
	sum float64
	n   int
}

// record adds a sample at t.
func (w *window) record(t time.Time, v float64) {
	sec := t.Unix()
	if n := len(w.buckets); n > 0 && w.buckets[n-1].sec == sec {
		w.buckets[n-1].sum += v
		w.buckets[n-1].n++
		return
	}
	w.buckets = append(w.buckets, bucket{sec: sec, sum: v, n: 1})
}

// average returns the mean of the per-second means within d before now, and
// whether any sample falls in it. Older buckets than the longest window
// asked for are dropped by trim.
func (w *window) average(now time.Time, d time.Duration) (float64, bool) {
	from := now.Add(-d).Unix()
	var sum float64
	n := 0
	for i := len(w.buckets) - 1; i >= 0 && w.buckets[i].sec > from; i-- {
		b := w.buckets[i]
		sum += b.sum / float64(b.n)
		n++
	}
	if n == 0 {
		return 0, false
	}
	return sum / float64(n), true
}

// trim drops buckets older than d before now.
func (w *window) trim(now time.Time, d time.Duration) {
	from := now.Add(-d).Unix()
	i := 0
	for i < len(w.buckets) && w.buckets[i].sec <= from {
		i++
	}
	if i > 0 {
		w.buckets = append(w.buckets[:0], w.buckets[i:]...)
	}
}
