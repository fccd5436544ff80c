package web

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bmsview/insights/internal/flow"
	"github.com/bmsview/insights/tasks"
)

// Metrics records the worker's step and job outcomes in Prometheus. It
// implements handlers.Observer: pass it as handlers.RunnerConfig.Observer.
type Metrics struct {
	steps *prometheus.HistogramVec
	jobs  *prometheus.CounterVec
}

// NewMetrics registers the worker metrics on reg (a new registry when nil)
// and returns the observer that feeds them:
//
//	insights_step_duration_seconds{step,outcome}  histogram; outcome completed | failed
//	insights_jobs_total{status,kind}              counter; status completed | failed, kind the error kind of a failure
//
// Registering twice on one registry reuses the metrics already there.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Metrics{
		steps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "insights_step_duration_seconds",
			Help:    "Duration of workflow step bodies that ran to an end, by step and outcome.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900},
		}, []string{"step", "outcome"}),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "insights_jobs_total",
			Help: "Jobs that reached completed or failed, by status and error kind (empty for completed).",
		}, []string{"status", "kind"}),
	}
	if err := reg.Register(m.steps); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			m.steps = are.ExistingCollector.(*prometheus.HistogramVec)
		}
	}
	registerOrReuse(reg, &m.jobs)
	return m
}

// StepDone implements handlers.Observer.
func (m *Metrics) StepDone(step, outcome string, d time.Duration) {
	m.steps.WithLabelValues(step, outcome).Observe(d.Seconds())
}

// JobDone implements handlers.Observer.
func (m *Metrics) JobDone(status, kind string) {
	m.jobs.WithLabelValues(status, kind).Inc()
}

// queueCollector reads asynq's queue sizes on every scrape.
type queueCollector struct {
	inspector *asynq.Inspector
	log       *slog.Logger
}

var (
	queueTasksDesc = prometheus.NewDesc("insights_queue_tasks",
		"Tasks in each asynq queue by state (pending, active, scheduled, retry, archived, completed, aggregating).",
		[]string{"queue", "state"}, nil)
	deadLetterDesc = prometheus.NewDesc("insights_dead_letter_tasks",
		"Archived (dead-lettered) tasks, all queues together.", nil, nil)
	queueLatencyDesc = prometheus.NewDesc("insights_queue_latency_seconds",
		"Age of the oldest pending task of each queue.", []string{"queue"}, nil)
	queuePausedDesc = prometheus.NewDesc("insights_queue_paused",
		"1 when the queue is paused.", []string{"queue"}, nil)
	queueUpDesc = prometheus.NewDesc("insights_queue_up",
		"1 when Redis answered the last queue scrape.", nil, nil)
)

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueTasksDesc
	ch <- deadLetterDesc
	ch <- queueLatencyDesc
	ch <- queuePausedDesc
	ch <- queueUpDesc
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	queues := slices.Clone(tasks.Queues)
	up := 1.0
	known, err := c.inspector.Queues()
	if err != nil {
		up = 0
		c.log.Warn("queue metrics: Redis", "err", err)
	}
	for _, q := range known {
		if !slices.Contains(queues, q) {
			queues = append(queues, q)
		}
	}
	archived := 0
	for _, q := range queues {
		// A queue no task has reached yet is all zero.
		info := &asynq.QueueInfo{Queue: q}
		if slices.Contains(known, q) {
			got, err := c.inspector.GetQueueInfo(q)
			if err != nil {
				up = 0
			} else {
				info = got
			}
		}
		for _, s := range []struct {
			state string
			n     int
		}{{"pending", info.Pending}, {"active", info.Active}, {"scheduled", info.Scheduled}, {"retry", info.Retry},
			{"archived", info.Archived}, {"completed", info.Completed}, {"aggregating", info.Aggregating}} {
			ch <- prometheus.MustNewConstMetric(queueTasksDesc, prometheus.GaugeValue, float64(s.n), q, s.state)
		}
		ch <- prometheus.MustNewConstMetric(queueLatencyDesc, prometheus.GaugeValue, info.Latency.Seconds(), q)
		paused := 0.0
		if info.Paused {
			paused = 1
		}
		ch <- prometheus.MustNewConstMetric(queuePausedDesc, prometheus.GaugeValue, paused, q)
		archived += info.Archived
	}
	ch <- prometheus.MustNewConstMetric(deadLetterDesc, prometheus.GaugeValue, float64(archived))
	ch <- prometheus.MustNewConstMetric(queueUpDesc, prometheus.GaugeValue, up)
}

// breakerCollector reads the model provider's breaker on every scrape.
type breakerCollector struct {
	breaker *flow.Breaker
	log     *slog.Logger
}

var (
	breakerStateDesc = prometheus.NewDesc("insights_breaker_state",
		"The model provider's circuit breaker: 1 for its current state (closed, open, half-open), 0 for the others.", []string{"state"}, nil)
	breakerFailuresDesc = prometheus.NewDesc("insights_breaker_failures",
		"Consecutive model outages the breaker has counted.", nil, nil)
)

func (c *breakerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- breakerStateDesc
	ch <- breakerFailuresDesc
}

func (c *breakerCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.breaker.State(ctx)
	if err != nil {
		c.log.Warn("breaker metrics", "err", err)
		return
	}
	for _, s := range []string{flow.Closed, flow.Open, flow.HalfOpen} {
		v := 0.0
		if st.State == s {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(breakerStateDesc, prometheus.GaugeValue, v, s)
	}
	ch <- prometheus.MustNewConstMetric(breakerFailuresDesc, prometheus.GaugeValue, float64(st.Failures))
}
