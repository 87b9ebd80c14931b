package gateway

import (
	"context"
	"sync"

	"github.com/troupe-llm/troupe/actors"
)

// layoutFailures ends the chats running on a layout's epoch when the epoch
// fails, with one context.AfterFunc per epoch rather than one per chat (a
// quarter of a KiB each, for as long as a chat streams).
var layoutFailures epochWatches

type epochWatches struct {
	mu      sync.Mutex
	byEpoch map[*actors.Epoch]*epochWatch
}

type epochWatch struct {
	chats map[*chat]struct{}
	stop  func() bool
}

// watch cancels c with errLayoutFailed when e fails, until the returned
// function is called.
func (w *epochWatches) watch(e *actors.Epoch, c *chat) (unwatch func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ew := w.byEpoch[e]
	if ew == nil {
		if w.byEpoch == nil {
			w.byEpoch = map[*actors.Epoch]*epochWatch{}
		}
		ew = &epochWatch{chats: map[*chat]struct{}{}}
		ew.stop = context.AfterFunc(e.Context(), func() { w.fail(e) })
		w.byEpoch[e] = ew
	}
	ew.chats[c] = struct{}{}
	return func() { w.unwatch(e, c) }
}

func (w *epochWatches) unwatch(e *actors.Epoch, c *chat) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ew := w.byEpoch[e]
	if ew == nil {
		return
	}
	delete(ew.chats, c)
	if len(ew.chats) == 0 {
		ew.stop()
		delete(w.byEpoch, e)
	}
}

// fail cancels the chats of an epoch that failed.
func (w *epochWatches) fail(e *actors.Epoch) {
	w.mu.Lock()
	ew := w.byEpoch[e]
	delete(w.byEpoch, e)
	w.mu.Unlock()
	if ew == nil {
		return
	}
	for c := range ew.chats {
		c.cancel(errLayoutFailed)
	}
}
