package cluster

import (
	"fmt"
	"maps"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/protobuf/proto"

	"github.com/troupe-llm/troupe/actors"
)

// nodeMeta is what this node tells the cluster about itself: static facts,
// and the names of the layouts it serves.
func (c *Cluster) nodeMeta(names []string) ([]byte, error) {
	meta, err := proto.Marshal(&actors.NodeMeta{
		ProtocolVersion: actors.ProtocolVersion,
		RemoteAddress:   c.remoteAddress(),
		HttpBase:        c.cfg.HTTPBase,
		EndpointPath:    c.cfg.EndpointPath,
		Layouts:         names,
	})
	if err != nil {
		return nil, err
	}
	if len(meta) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("node metadata is %d bytes, memberlist allows %d: use shorter LLM names or fewer per node", len(meta), memberlist.MetaMaxSize)
	}
	return meta, nil
}

// SetLayouts replaces the layouts this node serves, as a reload of its
// layout file does, and tells the cluster: members learn the new load at
// once by direct report and gossip, and the new names by memberlist's node
// update. Chats already running keep their layout. It returns the layouts
// it replaced, for the caller to stop once their chats have ended.
func (c *Cluster) SetLayouts(layouts map[string]*actors.Layout) (map[string]*actors.Layout, error) {
	fresh := actors.NewLayoutSet(maps.Clone(layouts))
	meta, err := c.nodeMeta(fresh.Names())
	if err != nil {
		return nil, err
	}
	old := c.layouts.Swap(fresh.Map())
	c.meta.Store(&meta)
	c.tellLoad(true)
	c.broadcastLoad(true)
	// UpdateNode waits for the news to spread, about a gossip interval.
	if err := c.ml.UpdateNode(5 * time.Second); err != nil {
		c.logger.Warn("could not tell the cluster the new layouts; they spread with the next sync", "err", err)
	}
	return old, nil
}
