package handlers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/flow"
	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/outage"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// Enqueuer sends the follow-up event (an *asynq.Client).
type Enqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// InsightsConfig configures the generate-insights workload.
type InsightsConfig struct {
	Engine insights.Engine
	// Retention keeps the follow-up visible once done. 0:
	// tasks.DefaultTaskRetention.
	Retention time.Duration
}

// Insights is the generate-insights workload.
type Insights struct {
	cfg       InsightsConfig
	followUps Enqueuer
}

// NewInsights returns the workload; followUps enqueues its
// insights-completed (the Worker's own client).
func NewInsights(cfg InsightsConfig, followUps Enqueuer) *Insights {
	if cfg.Retention == 0 {
		cfg.Retention = tasks.DefaultTaskRetention
	}
	return &Insights{cfg: cfg, followUps: followUps}
}

type initOutput struct {
	EventID  string `bson:"eventId" json:"eventId"`
	Queue    string `bson:"queue" json:"queue"`
	Priority int    `bson:"priority" json:"priority"`
}

type fetchOutput struct {
	SystemID string `bson:"systemId" json:"systemId"`
	Source   string `bson:"source" json:"source"` // job | event
}

type validateOutput struct {
	Valid bool `bson:"valid" json:"valid"`
}

type storeOutput struct {
	HealthScore float64   `bson:"healthScore" json:"healthScore"`
	Status      string    `bson:"status" json:"status"`
	StoredAt    time.Time `bson:"storedAt" json:"storedAt"`
}

type completionOutput struct {
	FollowUpEventID string `bson:"followUpEventId" json:"followUpEventId"`
	Duplicate       bool   `bson:"duplicate" json:"duplicate"`
}

// Workflow is the six steps of generate-insights.
func (w *Insights) Workflow(ctx context.Context, r *Attempt) error {
	job, p := r.Job, r.Task
	if _, err := Step(ctx, r, tasks.StepInitialize, func(ctx context.Context) (initOutput, error) {
		r.AlsoSet("queue", p.Queue)
		r.AlsoSet("priority", p.Priority)
		if job.AnalysisData == nil && p.Request != nil {
			// The job had no request (it was created by the worker, or by a
			// producer without the store): record the event's.
			job.Request = job.Request.Merge(p.Request)
			setRequest(r, job.Request)
		}
		if job.SystemID == "" && p.SystemID != "" {
			r.AlsoSet("systemId", p.SystemID)
			job.SystemID = p.SystemID
		}
		return initOutput{EventID: p.EventID, Queue: p.Queue, Priority: p.Priority}, nil
	}); err != nil {
		return err
	}
	fetched, err := Step(ctx, r, tasks.StepFetchJob, func(ctx context.Context) (fetchOutput, error) {
		if job.AnalysisData == nil || job.SystemID == "" {
			return fetchOutput{}, DoNotRetry(fmt.Errorf("job %s is missing its request: it needs analysisData and systemId", job.ID))
		}
		source := "job"
		if p.Request != nil && p.Request.AnalysisData != nil {
			source = "event"
		}
		return fetchOutput{SystemID: job.SystemID, Source: source}, nil
	})
	if err != nil {
		return err
	}
	req := job.Request.WithDefaults()
	systemID := fetched.SystemID
	if _, err := Step(ctx, r, tasks.StepValidate, func(ctx context.Context) (validateOutput, error) {
		// Requests that did not pass Client.Send (the app's own jobs, tasks
		// of other producers) are checked here.
		if err := req.Validate(systemID); err != nil {
			return validateOutput{}, DoNotRetry(err)
		}
		return validateOutput{Valid: true}, nil
	}); err != nil {
		return err
	}
	result, err := SealedStep(ctx, r, tasks.StepProcessInsights, func(ctx context.Context) (*insights.Result, error) {
		// The step's start event is written with the engine's first
		// progress event (a model's first turn), so a long step shows it
		// while it runs; the rules engine takes milliseconds and reports
		// none, and it goes with the step's checkpoint: no extra write.
		// The flow control (a system's slot, the model's limits) knows
		// the run by its eventId and serves waiting runs by priority.
		return w.cfg.Engine.Generate(flow.WithRun(ctx, p.EventID, p.Priority), insights.Request{
			SystemID: systemID, Snapshot: *req.AnalysisData, CustomPrompt: req.CustomPrompt,
			ContextWindowDays: req.ContextWindowDays, MaxIterations: req.MaxIterations, FullContextMode: req.FullContextMode,
			ModelOverride: req.ModelOverride,
			Progress: func(ctx context.Context, ev insights.Progress) error {
				r.Report(ev.Type, ev.Data)
				return r.Flush(ctx)
			},
		})
	})
	if err != nil {
		return err
	}
	stored, err := SealedStep(ctx, r, tasks.StepStoreResults, func(ctx context.Context) (storeOutput, error) {
		final, err := r.Seal(store.NewFinalInsights(result))
		if err != nil {
			return storeOutput{}, fmt.Errorf("seal result: %w", err)
		}
		now := time.Now().UTC()
		r.AlsoSet("finalInsights", final)
		r.AlsoSet("partialInsights", nil)
		r.AlsoSet("status", tasks.StatusCompleted)
		r.AlsoSet("completedAt", now)
		r.AlsoSet("error", nil)
		r.Report(insights.ProgressStatus, map[string]any{"message": "Analysis completed successfully"})
		return storeOutput{HealthScore: result.HealthScore, Status: result.Status, StoredAt: now}, nil
	})
	if err != nil {
		return err
	}
	if job.Status != tasks.StatusCompleted {
		job.Status = tasks.StatusCompleted
		r.jobDone(tasks.StatusCompleted, "")
	}
	_, err = Step(ctx, r, tasks.StepSendCompletion, func(ctx context.Context) (completionOutput, error) {
		task, opts, err := NewCompletedTask(tasks.CompletedPayload{
			EventID: p.EventID, JobID: job.ID, SystemID: systemID, CompletedAt: stored.StoredAt, HasInsights: true,
			HealthScore: stored.HealthScore, Status: stored.Status,
		}, w.cfg.Retention)
		if err != nil {
			return completionOutput{}, err
		}
		id := tasks.FollowUpTaskIDPrefix + p.EventID
		out := completionOutput{FollowUpEventID: id}
		if _, err := w.followUps.EnqueueContext(ctx, task, opts...); err != nil {
			if !errors.Is(err, asynq.ErrTaskIDConflict) {
				// The task and its options are built and checked above, so
				// what the enqueue can still meet is Redis's failure (asynq
				// passes Redis's errors on as text, not as types).
				return out, outage.Mark(ctx, outage.Redis, fmt.Errorf("enqueue %s: %w", tasks.EventInsightsCompleted, err))
			}
			out.Duplicate = true // sent by an earlier attempt
		}
		r.AlsoSet("followUp", map[string]any{"eventId": id, "enqueuedAt": time.Now().UTC()})
		return out, nil
	})
	return err
}

// setRequest records the request fields at the job's top level, as the
// BMS app stores them.
func setRequest(r *Attempt, q tasks.Request) {
	for _, e := range store.RequestFields(q) {
		r.AlsoSet(e.Key, e.Value)
	}
}
