package store

// QueuedWrites is how many writes wait for a group (tests).
func (s *Store) QueuedWrites() int { return len(s.group.queue) }
