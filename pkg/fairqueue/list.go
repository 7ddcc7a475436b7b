package fairqueue

// An Entry is in two lists at once: its tenant's flow (FIFO) and its class
// (push order, for aging and eviction).
const (
	inFlow = iota
	inClass
	numLists
)

// link is an Entry's place in one list.
type link[V any] struct {
	prev, next *Entry[V]
}

// list is a doubly linked list of entries through their links[k].
type list[V any] struct {
	first, last *Entry[V]
}

func (l *list[V]) pushBack(e *Entry[V], k int) {
	if l.last == nil {
		l.first = e
	} else {
		l.last.links[k].next = e
		e.links[k].prev = l.last
	}
	l.last = e
}

func (l *list[V]) remove(e *Entry[V], k int) {
	ln := &e.links[k]
	if ln.prev != nil {
		ln.prev.links[k].next = ln.next
	} else {
		l.first = ln.next
	}
	if ln.next != nil {
		ln.next.links[k].prev = ln.prev
	} else {
		l.last = ln.prev
	}
	*ln = link[V]{}
}
