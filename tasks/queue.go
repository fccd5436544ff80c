package tasks

import (
	"fmt"
	"strconv"
	"strings"
)

// Queue names.
const (
	QueueCritical = "critical"
	QueueHigh     = "high"
	QueueDefault  = "default"
	QueueLow      = "low"
)

// Queues lists every queue this service uses.
var Queues = []string{QueueCritical, QueueHigh, QueueDefault, QueueLow}

// QueueFor maps a priority (0–10) to its queue: 9–10 critical, 7–8 high,
// 4–6 default, 0–3 low.
func QueueFor(priority int) string {
	switch {
	case priority >= 9:
		return QueueCritical
	case priority >= 7:
		return QueueHigh
	case priority >= 4:
		return QueueDefault
	default:
		return QueueLow
	}
}

// DefaultQueueWeights is QUEUE_WEIGHTS unset.
const DefaultQueueWeights = "critical=6,high=4,default=2,low=1"

// ParseQueueWeights reads "name=weight,..." as asynq.Config.Queues wants it.
// Every queue of Queues must be present with a weight ≥ 1.
func ParseQueueWeights(s string) (map[string]int, error) {
	out := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, w, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not name=weight", part)
		}
		name = strings.TrimSpace(name)
		n, err := strconv.Atoi(strings.TrimSpace(w))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("weight of %q must be an integer ≥ 1, got %q", name, w)
		}
		if !knownQueue(name) {
			return nil, fmt.Errorf("unknown queue %q (want %s)", name, strings.Join(Queues, ", "))
		}
		out[name] = n
	}
	for _, q := range Queues {
		if _, ok := out[q]; !ok {
			return nil, fmt.Errorf("queue %q has no weight", q)
		}
	}
	return out, nil
}

func knownQueue(name string) bool {
	for _, q := range Queues {
		if q == name {
			return true
		}
	}
	return false
}
