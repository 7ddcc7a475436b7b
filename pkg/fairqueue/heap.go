package fairqueue

// flowHeap is a min-heap of one class's backlogged flows ordered by their
// tenant's virtual counter, ties going to the flow with fewer waiting items
// (a newly backlogged tenant, lifted to the smallest counter, goes before
// the long backlog it was lifted to), then to the flow whose head arrived
// first.
// Each flow knows its index, so a flow is fixed or removed in O(log n).
type flowHeap[V any] []*flow[V]

func (h flowHeap[V]) less(i, j int) bool {
	a, b := h[i], h[j]
	if a.t.counter != b.t.counter {
		return a.t.counter < b.t.counter
	}
	if a.n != b.n {
		return a.n < b.n
	}
	return a.items.first.seq < b.items.first.seq
}

func (h flowHeap[V]) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}

func (h *flowHeap[V]) push(f *flow[V]) {
	f.idx = len(*h)
	*h = append(*h, f)
	h.up(f.idx)
}

// remove takes the flow at index i out of the heap.
func (h *flowHeap[V]) remove(i int) {
	old := *h
	last := len(old) - 1
	if i != last {
		old.swap(i, last)
	}
	old[last].idx = -1
	old[last] = nil
	*h = old[:last]
	if i != last {
		h.fix(i)
	}
}

// fix restores the order after the key of the flow at index i changed.
func (h flowHeap[V]) fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

func (h flowHeap[V]) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			return
		}
		h.swap(i, p)
		i = p
	}
}

// down sifts the flow at i towards the leaves and reports whether it moved.
func (h flowHeap[V]) down(i0 int) bool {
	i, n := i0, len(h)
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			break
		}
		h.swap(i, m)
		i = m
	}
	return i > i0
}
