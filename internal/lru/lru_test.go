package lru

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func keys(m *Map[string, int]) []string {
	var out []string
	for s := range m.All() {
		out = append(out, m.Key(s))
	}
	return out
}

func TestMap(t *testing.T) {
	type op struct {
		insert, touch, remove string
	}
	tests := []struct {
		name      string
		capacity  int
		ops       []op
		want      []string // newest first
		evicted   []string
		evictions uint64
	}{
		{
			name:     "insert orders newest first",
			capacity: 3,
			ops:      []op{{insert: "a"}, {insert: "b"}, {insert: "c"}},
			want:     []string{"c", "b", "a"},
		},
		{
			name:      "full map evicts least recently used",
			capacity:  2,
			ops:       []op{{insert: "a"}, {insert: "b"}, {insert: "c"}},
			want:      []string{"c", "b"},
			evicted:   []string{"a"},
			evictions: 1,
		},
		{
			name:      "touch protects from eviction",
			capacity:  2,
			ops:       []op{{insert: "a"}, {insert: "b"}, {touch: "a"}, {insert: "c"}},
			want:      []string{"c", "a"},
			evicted:   []string{"b"},
			evictions: 1,
		},
		{
			name:     "removed slot is reused without eviction",
			capacity: 2,
			ops:      []op{{insert: "a"}, {insert: "b"}, {remove: "a"}, {insert: "c"}},
			want:     []string{"c", "b"},
		},
		{
			name:     "remove the newest and the oldest",
			capacity: 4,
			ops:      []op{{insert: "a"}, {insert: "b"}, {insert: "c"}, {remove: "c"}, {remove: "a"}},
			want:     []string{"b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var evicted []string
			var m *Map[string, int]
			m = New[string, int](tt.capacity, func(s int32) { evicted = append(evicted, m.Key(s)) })
			for _, o := range tt.ops {
				switch {
				case o.insert != "":
					s, _ := m.Insert(o.insert)
					*m.Value(s) = len(o.insert)
				case o.touch != "":
					s, ok := m.Lookup(o.touch)
					if !ok {
						t.Fatalf("touch %q: absent", o.touch)
					}
					m.Touch(s)
				case o.remove != "":
					s, ok := m.Lookup(o.remove)
					if !ok {
						t.Fatalf("remove %q: absent", o.remove)
					}
					m.Remove(s)
				}
			}
			if diff := cmp.Diff(tt.want, keys(m)); diff != "" {
				t.Errorf("entries (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.evicted, evicted); diff != "" {
				t.Errorf("evicted (-want +got):\n%s", diff)
			}
			if m.Evictions() != tt.evictions || m.Len() != len(tt.want) {
				t.Errorf("Evictions, Len = %d, %d; want %d, %d", m.Evictions(), m.Len(), tt.evictions, len(tt.want))
			}
			if s, ok := m.Oldest(); ok && m.Key(s) != tt.want[len(tt.want)-1] {
				t.Errorf("Oldest = %q, want %q", m.Key(s), tt.want[len(tt.want)-1])
			}
			// The reverse walk must agree with the forward one.
			var back []string
			s, _ := m.Oldest()
			for ; s != Nil; s = m.Newer(s) {
				back = append([]string{m.Key(s)}, back...)
			}
			if diff := cmp.Diff(tt.want, back); diff != "" {
				t.Errorf("oldest-to-newest walk (-want +got):\n%s", diff)
			}
		})
	}
}

func TestInsertZeroesReusedValue(t *testing.T) {
	m := New[int, int](1, nil)
	s, _ := m.Insert(1)
	*m.Value(s) = 42
	s, evicted := m.Insert(2)
	if !evicted || *m.Value(s) != 0 {
		t.Errorf("Insert after eviction: evicted %v, value %d; want true, 0", evicted, *m.Value(s))
	}
	if _, ok := m.Lookup(1); ok {
		t.Error("evicted key still found")
	}
}

func BenchmarkChurn(b *testing.B) {
	m := New[uint64, [4]uint64](1024, nil)
	b.ReportAllocs()
	for i := range b.N {
		k := uint64(i)
		if s, ok := m.Lookup(k % 4096); ok {
			m.Touch(s)
		} else {
			m.Insert(k % 4096)
		}
	}
}
