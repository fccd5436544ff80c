// Package tasks is the producer's side of the insights workloads: event
// names, the event and its filter, priorities and queues, the run a send
// records and enqueues (the task payload), and the Go client that sends.
// What a worker does with a run (steps, retries, errors) is in handlers.
//
// It imports nothing of this module but the leaf type package bms, so a Go
// producer can depend on it alone.
package tasks

import (
	"time"

	"github.com/bmsview/insights/internal/bms"
)

// Event names. The asynq task type is the event name; a follow-up's task
// id is FollowUpTaskIDPrefix + the eventId of its run.
const (
	EventGenerateInsights  = "generate-insights"
	EventInsightsCompleted = "insights-completed"
	FollowUpTaskIDPrefix   = "insights-completed:"
)

// Defaults and limits of a run. The defaults apply where a field is unset.
const (
	DefaultContextWindow = 90
	DefaultMaxIterations = 10
	DefaultPriority      = 5
	UrgentPriority       = 10
	MaxCustomPromptLen   = 5000
	MaxPayloadBytes      = 500 * 1024
	DefaultTaskTimeout   = 24 * time.Hour  // TASK_TIMEOUT: "unlimited" in practice
	DefaultTaskRetention = 168 * time.Hour // TASK_RETENTION
	// AsynqMaxRetry is the MaxRetry given to asynq: a backstop only. The
	// retry budgets are the handlers' (MAX_RETRIES failures of a run, and
	// of a follow-up), because asynq keeps its retried count when an
	// archived task is run again and because a store outage must not use
	// them.
	AsynqMaxRetry            = 100000
	maxIDLen                 = 128
	minContextWindow         = 1
	maxContextWindow         = 365
	minIterations            = 1
	maxIterations            = 50
	MinPriority, MaxPriority = 0, 10
)

// Step names of generate-insights, in order.
const (
	StepInitialize      = "initialize"
	StepFetchJob        = "fetch-job"
	StepValidate        = "validate"
	StepProcessInsights = "process-insights"
	StepStoreResults    = "store-results"
	StepSendCompletion  = "send-completion"
)

// Steps lists the workflow's steps in the order they run.
var Steps = []string{StepInitialize, StepFetchJob, StepValidate, StepProcessInsights, StepStoreResults, StepSendCompletion}

// AnalysisData is one BMS snapshot (docs/DESIGN.md section 7).
type AnalysisData = bms.Snapshot

// Request is what a run analyses: the event's request fields. The job
// document holds them at its top level, as the BMS app stores them; 0 and
// "" (the app's null) take the defaults when the run validates them.
type Request struct {
	AnalysisData      *AnalysisData `json:"analysisData,omitempty" bson:"analysisData,omitempty"`
	CustomPrompt      string        `json:"customPrompt,omitempty" bson:"customPrompt,omitempty"`
	ContextWindowDays int           `json:"contextWindowDays,omitempty" bson:"contextWindowDays,omitempty"`
	MaxIterations     int           `json:"maxIterations,omitempty" bson:"maxIterations,omitempty"`
	FullContextMode   bool          `json:"fullContextMode,omitempty" bson:"fullContextMode,omitempty"`
	ModelOverride     string        `json:"modelOverride,omitempty" bson:"modelOverride,omitempty"`
}

// WithDefaults returns r with the defaults in place of unset fields.
func (r Request) WithDefaults() Request {
	if r.ContextWindowDays == 0 {
		r.ContextWindowDays = DefaultContextWindow
	}
	if r.MaxIterations == 0 {
		r.MaxIterations = DefaultMaxIterations
	}
	return r
}

// Merge returns r with every field that o sets put in place of r's: a
// re-send that carries only some fields keeps the stored others.
func (r Request) Merge(o *Request) Request {
	if o == nil {
		return r
	}
	if o.AnalysisData != nil {
		r.AnalysisData = o.AnalysisData
	}
	if o.CustomPrompt != "" {
		r.CustomPrompt = o.CustomPrompt
	}
	if o.ContextWindowDays != 0 {
		r.ContextWindowDays = o.ContextWindowDays
	}
	if o.MaxIterations != 0 {
		r.MaxIterations = o.MaxIterations
	}
	if o.FullContextMode {
		r.FullContextMode = true
	}
	if o.ModelOverride != "" {
		r.ModelOverride = o.ModelOverride
	}
	return r
}

// Run is one run of a job, the one type its identity travels in: what a
// send records (JobStore.ClaimRun) and enqueues as the task's payload, what
// the worker decodes and starts, and what the reconciler or an operator's
// retry enqueues again from the job. Its EventID is the asynq task id.
type Run struct {
	EventID  string `json:"eventId"`
	JobID    string `json:"jobId"`
	SystemID string `json:"systemId,omitempty"`
	// Request is nil when the event carried only a jobId: the fetch-job step
	// then loads it from the job document.
	Request  *Request `json:"request,omitempty"`
	Priority int      `json:"priority"`
	Queue    string   `json:"queue"`
	// ProcessAt is when the run is due; zero means now.
	ProcessAt time.Time `json:"processAt,omitzero"`
	// FromStep makes the run a re-run of its job's previous run from that
	// step: the steps before it that completed there are kept, not run
	// again. "": every step runs.
	FromStep string `json:"fromStep,omitempty"`
}

// Scheduled reports whether the run is due after now (asynq ProcessAt; the
// job reads scheduled until then).
func (r Run) Scheduled(now time.Time) bool { return r.ProcessAt.After(now) }

// CompletedPayload is the asynq task payload of insights-completed.
type CompletedPayload struct {
	EventID     string    `json:"eventId"`
	JobID       string    `json:"jobId"`
	SystemID    string    `json:"systemId"`
	CompletedAt time.Time `json:"completedAt"`
	HasInsights bool      `json:"hasInsights"`
	HealthScore float64   `json:"healthScore"`
	Status      string    `json:"status"`
}

// Job statuses (the job document's `status`).
const (
	StatusQueued     = "queued"
	StatusScheduled  = "scheduled"
	StatusProcessing = "processing"
	StatusRetrying   = "retrying"
	StatusCompleted  = "completed"
	StatusFailed     = "failed"
	StatusCancelled  = "cancelled"
)

// Live reports whether a job in this status still has a run under way, so a
// new event with its jobId is a duplicate.
func Live(status string) bool {
	switch status {
	case StatusQueued, StatusScheduled, StatusProcessing, StatusRetrying:
		return true
	}
	return false
}
