package actors

import (
	"maps"
	"slices"
	"sync/atomic"
)

// LayoutSet is the set of layouts a node serves, by name, replaced whole
// when the node reloads its layout file: readers take a snapshot and never
// see a set half changed, and a chat keeps the layout it started on.
type LayoutSet struct {
	m atomic.Pointer[map[string]*Layout]
}

// NewLayoutSet returns a set holding m, which it owns from now on.
func NewLayoutSet(m map[string]*Layout) *LayoutSet {
	s := &LayoutSet{}
	s.Swap(m)
	return s
}

// Get returns the layout named name.
func (s *LayoutSet) Get(name string) (*Layout, bool) {
	l, ok := (*s.m.Load())[name]
	return l, ok
}

// Map returns the current layouts; the caller must not change the map.
func (s *LayoutSet) Map() map[string]*Layout { return *s.m.Load() }

// Names returns the current layouts' names, sorted.
func (s *LayoutSet) Names() []string { return slices.Sorted(maps.Keys(*s.m.Load())) }

// Swap replaces the set with m, which it owns from now on, and returns the
// layouts it held.
func (s *LayoutSet) Swap(m map[string]*Layout) map[string]*Layout {
	if m == nil {
		m = map[string]*Layout{}
	}
	old := s.m.Swap(&m)
	if old == nil {
		return nil
	}
	return *old
}
