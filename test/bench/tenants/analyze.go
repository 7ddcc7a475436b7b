package main

import (
	"net/http"
	"slices"
	"strconv"
	"time"
)

// Fail modes, as --ratelimit-fail names them.
const (
	failOpen   = "open"
	failClosed = "closed"
)

// meanCost returns the mean tokens of the 2xx answers that reported usage.
func meanCost(recs []record) (float64, bool) {
	var sum int64
	n := 0
	for _, r := range recs {
		if ok2xx(r) && r.usage {
			sum += r.tokens
			n++
		}
	}
	if n == 0 {
		return 0, false
	}
	return float64(sum) / float64(n), true
}

func ok2xx(r record) bool { return r.status >= 200 && r.status <= 299 }

// firstDenial returns the send time of the first request refused with 429.
func firstDenial(recs []record) (time.Duration, bool) {
	first, found := time.Duration(0), false
	for _, r := range recs {
		if r.status == http.StatusTooManyRequests && (!found || r.sent < first) {
			first, found = r.sent, true
		}
	}
	return first, found
}

// servedIn returns the tokens of the 2xx answers to requests sent in
// [from, to) (a 2xx without usage counts cost, the mean of the others).
func servedIn(recs []record, from, to time.Duration, cost float64) float64 {
	sum := 0.0
	for _, r := range recs {
		if !ok2xx(r) || r.sent < from || r.sent >= to {
			continue
		}
		if r.usage {
			sum += float64(r.tokens)
		} else {
			sum += cost
		}
	}
	return sum
}

// failModeSeen returns when, after kill, the first answer came that shows
// the fail mode, as a time from kill:
//
//   - closed: a 503;
//   - open: a 2xx to a request beyond the limit. The limit is followed with
//     the limiter's own algorithm (GCRA: a bucket of limit tokens refilled
//     at limit per minute), from the first 429 on (when the bucket is
//     known to be empty) with the 2xx answers' tokens debited at their send
//     times; a request is beyond it when the bucket lacks more than slack
//     tokens of its cost (slack absorbs the reservation's estimate and the
//     clocks).
//
// violationsBefore counts the open mode's requests beyond the limit before
// the kill: 0 when the model agrees with the limiter.
func failModeSeen(recs []record, mode string, kill time.Duration, limit int64, slack, cost float64) (after time.Duration, seen bool, violationsBefore int) {
	recs = slices.Clone(recs)
	slices.SortFunc(recs, func(a, b record) int { return int(a.sent - b.sent) })
	if mode == failClosed {
		for _, r := range recs {
			if r.status == http.StatusServiceUnavailable && r.answered >= kill && (!seen || r.answered-kill < after) {
				after, seen = r.answered-kill, true
			}
		}
		return after, seen, 0
	}
	start, ok := firstDenial(recs)
	if !ok || limit <= 0 {
		return 0, false, 0
	}
	perToken := float64(time.Minute) / float64(limit) // ns a token takes to refill
	tau := float64(time.Minute)                       // the bucket's depth, in ns
	tat := float64(start) + tau                       // empty at start
	for _, r := range recs {
		if r.sent <= start || !ok2xx(r) {
			continue
		}
		c := cost
		if r.usage {
			c = float64(r.tokens)
		}
		t := float64(r.sent)
		base := max(tat, t)
		if base+c*perToken-t > tau+slack*perToken {
			if r.answered >= kill {
				if !seen || r.answered-kill < after {
					after, seen = r.answered-kill, true
				}
			} else {
				violationsBefore++
			}
		}
		tat = base + c*perToken
	}
	return after, seen, violationsBefore
}

// processRecords returns the records of the requests sent to process i.
func processRecords(recs []record, i int) []record {
	var out []record
	for _, r := range recs {
		if r.proc == i {
			out = append(out, r)
		}
	}
	return out
}

// statusCounts counts the records by status ("other" for no answer).
func statusCounts(recs []record, from, to time.Duration) map[string]int {
	out := map[string]int{}
	for _, r := range recs {
		if r.sent < from || r.sent >= to {
			continue
		}
		switch {
		case r.status == 0:
			out["other"]++
		case ok2xx(r):
			out["2xx"]++
		default:
			out[strconv.Itoa(r.status)]++
		}
	}
	return out
}
