package statemachine

import "github.com/emirpasic/gods/queues/arrayqueue"

// stateQueue is a typed FIFO of states over gods' array queue, used by
// validation (not the hot path) for the reachability walk.
type stateQueue struct{ q *arrayqueue.Queue }

func newStateQueue() stateQueue { return stateQueue{q: arrayqueue.New()} }

func (s stateQueue) push(st State) { s.q.Enqueue(st) }

func (s stateQueue) pop() (State, bool) {
	v, ok := s.q.Dequeue()
	if !ok {
		return None, false
	}
	return v.(State), true
}
