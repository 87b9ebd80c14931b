package actors

import (
	"github.com/asynkron/protoactor-go/actor"
)

// registryBuckets is how many buckets the process registry of a system made
// by NewActorSystem has: each is a concurrent map of 32 locked shards, so 16
// give 512 locks, plenty for a node's actors and chats.
const registryBuckets = 16

// NewActorSystem returns an actor system for a Troupe node: protoactor's,
// with a smaller process registry. protoactor makes 1,024 buckets of 32
// shards each, 32,768 maps that take about 3.5 MiB at start; and since every
// chat registers its reply under a new id, after some traffic each of those
// maps also holds an emptied table of its own, several MiB more that Go maps
// never give back. Call it in place of actor.NewActorSystemWithConfig.
func NewActorSystem(config *actor.Config) *actor.ActorSystem {
	system := actor.NewActorSystemWithConfig(config)
	shrinkRegistry(system.ProcessRegistry, registryBuckets)
	return system
}

// shrinkRegistry keeps the first n buckets of a registry and moves what the
// others hold into them. Nothing else may use the registry meanwhile, which
// is why only NewActorSystem calls it, before it returns the system.
func shrinkRegistry(r *actor.ProcessRegistryValue, n int) {
	buckets := r.LocalPIDs.LocalPIDs
	if len(buckets) <= n {
		return
	}
	// IterCb, not Items: Items starts a goroutine per shard.
	held := map[string]any{}
	for _, b := range buckets {
		b.IterCb(func(id string, p any) { held[id] = p })
	}
	for id := range held {
		r.LocalPIDs.GetBucket(id).Remove(id)
	}
	r.LocalPIDs.LocalPIDs = buckets[:n:n]
	for id, p := range held {
		r.LocalPIDs.GetBucket(id).Set(id, p)
	}
}
