package tasks

// Queue names.
const (
	QueueCritical = "critical"
	QueueHigh     = "high"
	QueueDefault  = "default"
	QueueLow      = "low"
)

// FollowUpQueue is the queue of the insights-completed follow-up: it
// waits behind the runs themselves.
const FollowUpQueue = QueueLow

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
