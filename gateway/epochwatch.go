package gateway

import (
	"context"
	"sync"

	"github.com/troupe-llm/troupe/actors"
)

// layoutFailures ends the chats running on a layout's epoch when the epoch
// fails, with one context.AfterFunc per epoch rather than one per chat (a
// quarter of a KiB each, for as long as a chat streams). An epoch's watch
// stays until the epoch ends, so that chats one after the other do not
// each set one up; a layout that stops without its epoch ending leaves one
// small watch behind.
var layoutFailures epochWatches

type epochWatches struct {
	mu      sync.Mutex
	byEpoch map[*actors.Epoch]*epochWatch
}

type epochWatch struct {
	chats map[*chat]struct{}
}

// watch cancels c with errLayoutFailed when e fails, until unwatch.
func (w *epochWatches) watch(e *actors.Epoch, c *chat) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ew := w.byEpoch[e]
	if ew == nil {
		if w.byEpoch == nil {
			w.byEpoch = map[*actors.Epoch]*epochWatch{}
		}
		ew = &epochWatch{chats: map[*chat]struct{}{}}
		context.AfterFunc(e.Context(), func() { w.fail(e) })
		w.byEpoch[e] = ew
	}
	ew.chats[c] = struct{}{}
}

func (w *epochWatches) unwatch(e *actors.Epoch, c *chat) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ew := w.byEpoch[e]
	if ew == nil {
		return
	}
	delete(ew.chats, c)
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
		c.abort(errLayoutFailed)
	}
}
