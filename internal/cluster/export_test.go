package cluster

import "github.com/redis/go-redis/v9"

// AddHook lets tests observe the commands a node sends.
func (c *Cluster) AddHook(h redis.Hook) { c.client.AddHook(h) }
