package bench

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// waiter is a request that keeps its tenant backlogged over [from, to] and
// serves nothing (it failed at to).
func waiter(from, to float64) servedRecord { return servedRecord{sent: from, first: to, end: to} }

// done is a completed request.
func done(sent, first, end, prompt, output float64) servedRecord {
	return servedRecord{sent: sent, first: first, end: end, ok: true, prompt: prompt, output: output}
}

func TestBackloggedShares(t *testing.T) {
	cases := []struct {
		name    string
		tenants [][]servedRecord
		shares  []float64 // nil: undefined
		seconds float64
	}{
		{"one tenant: no share", [][]servedRecord{{waiter(0, 10), done(1, 2, 3, 5, 5)}}, nil, 0},
		{"no tenants", nil, nil, 0},
		{"a tenant without requests is never backlogged", [][]servedRecord{{waiter(0, 10), done(1, 2, 3, 5, 5)}, {}}, nil, 0},
		{"never backlogged together", [][]servedRecord{{done(0, 1, 2, 5, 5)}, {done(2, 3, 4, 5, 5)}}, nil, 0},
		{"backlogs that only touch: an instant is no time", [][]servedRecord{
			{waiter(0, 2), done(0, 2, 3, 5, 5)}, {waiter(2, 4), done(2, 2, 3, 5, 5)}}, nil, 0},
		{"an even split", [][]servedRecord{
			{waiter(0, 10), done(1, 2, 6, 4, 8)},
			{waiter(0, 10), done(1, 2, 6, 4, 8)}}, []float64{0.5, 0.5}, 10},
		{"output spread evenly across the window's edge", [][]servedRecord{
			{waiter(0, 10), done(5, 8, 12, 0, 40)}, // [8,10] of [8,12]: 20
			{waiter(0, 10), done(1, 2, 3, 10, 10)}}, []float64{0.5, 0.5}, 10},
		{"a prompt served after the window is not counted", [][]servedRecord{
			{waiter(0, 10), done(9, 11, 11, 100, 0)}, // A's backlog runs to 11, B's to 10
			{waiter(0, 10), done(0, 1, 2, 10, 30)}}, []float64{0, 1}, 10},
		{"a prompt served at the window's last instant is counted", [][]servedRecord{
			{done(0, 10, 10, 30, 10)},
			{waiter(0, 10), done(0, 5, 10, 10, 30)}}, []float64{0.5, 0.5}, 10},
		{"an answer that is not streamed serves everything at once", [][]servedRecord{
			{waiter(0, 10), done(2, 5, 5, 6, 4)},
			{waiter(0, 10), done(2, 11, 11, 6, 4)}}, []float64{1, 0}, 10},
		{"failed requests serve nothing", [][]servedRecord{
			{waiter(0, 10), {sent: 0, first: 3, end: 9, prompt: 50, output: 50}, done(1, 2, 3, 1, 1)},
			{waiter(0, 10), done(1, 2, 3, 1, 1)}}, []float64{0.5, 0.5}, 10},
		{"contended but nothing served: no share", [][]servedRecord{{waiter(0, 10)}, {waiter(5, 20)}}, nil, 5},
		{"three tenants: only where all three wait", [][]servedRecord{
			{waiter(0, 10), done(0, 1, 2, 50, 0), done(3, 5, 5, 5, 5)},
			{waiter(0, 10), done(4, 4.5, 5.5, 10, 0)},
			{waiter(4, 6)}}, []float64{0.5, 0.5, 0}, 2},
		{"windows apart", [][]servedRecord{
			{waiter(0, 2), waiter(4, 6), done(0, 1, 5, 0, 40)}, // [1,2]+[4,5] of [1,5]: 20
			{waiter(0, 10), done(5, 5.5, 8, 20, 0)}}, []float64{0.5, 0.5}, 4},
		{"overlapping requests of one tenant merge", [][]servedRecord{
			{waiter(0, 4), waiter(3, 8), waiter(8, 10), done(1, 9, 9, 3, 0)},
			{waiter(0, 10), done(1, 2, 2, 1, 0)}}, []float64{0.75, 0.25}, 10},
		{"a record with its first token before it was sent is ignored", [][]servedRecord{
			{waiter(0, 10), {sent: 5, first: 4, end: 4}, done(1, 2, 2, 1, 1)},
			{waiter(0, 10), done(1, 2, 2, 1, 1)}}, []float64{0.5, 0.5}, 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			shares, secs := backloggedShares(tc.tenants)
			assert.InDelta(t, tc.seconds, secs, 1e-9)
			if tc.shares == nil {
				assert.Nil(t, shares)
				return
			}
			require.Len(t, shares, len(tc.shares))
			sum := 0.0
			for i := range shares {
				assert.InDelta(t, tc.shares[i], shares[i], 1e-9, "tenant %d", i)
				assert.False(t, math.IsNaN(shares[i]))
				sum += shares[i]
			}
			assert.InDelta(t, 1, sum, 1e-9)
		})
	}
}

// Many tenants and requests: the computation stays exact and fast (sorted
// lists, binary searches).
func TestBackloggedSharesLarge(t *testing.T) {
	const tenants, reqs = 8, 5000
	all := make([][]servedRecord, tenants)
	for k := range all {
		all[k] = append(all[k], waiter(0, reqs))
		for i := range reqs {
			at := float64(i)
			all[k] = append(all[k], done(at, at+0.5, at+1, 1, 1))
		}
	}
	start := time.Now()
	shares, secs := backloggedShares(all)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.InDelta(t, reqs, secs, 1e-9)
	for _, s := range shares {
		assert.InDelta(t, 1.0/tenants, s, 1e-9)
	}
}

func TestRecordOf(t *testing.T) {
	origin := time.Unix(1000, 0)
	at := func(s float64) time.Time { return origin.Add(seconds(s)) }
	cases := []struct {
		name string
		s    sample
		want servedRecord
		ok   bool
	}{
		{"streamed: backlogged until the first token",
			sample{sent: at(1), ttft: seconds(0.5), e2e: seconds(2), streamed: true, chunks: 3, prompt: 7, output: 3},
			done(1, 1.5, 3, 7, 3), true},
		{"not streamed: until the answer",
			sample{sent: at(1), e2e: seconds(2), prompt: 7, output: 3},
			done(1, 3, 3, 7, 3), true},
		{"streamed without content: until the end",
			sample{sent: at(1), e2e: seconds(2), streamed: true, prompt: 7},
			done(1, 3, 3, 7, 0), true},
		{"failed: backlogged until the error, serves nothing",
			sample{outcome: outcomeError, sent: at(2), e2e: seconds(1), prompt: 7},
			servedRecord{sent: 2, first: 3, end: 3, prompt: 7}, true},
		{"never sent", sample{outcome: outcomeError}, servedRecord{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := recordOf(&tc.s, origin)
			require.Equal(t, tc.ok, ok)
			assert.InDelta(t, tc.want.sent, got.sent, 1e-9)
			assert.InDelta(t, tc.want.first, got.first, 1e-9)
			assert.InDelta(t, tc.want.end, got.end, 1e-9)
			assert.Equal(t, tc.want.ok, got.ok)
			assert.Equal(t, tc.want.prompt, got.prompt)
			assert.Equal(t, tc.want.output, got.output)
		})
	}
}
