package ops

import (
	"context"
	"errors"
	"slices"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// RerunRequest is a re-run of a job from a step (POST
// /api/jobs/{jobId}/rerun): the request fields it sets replace the job's
// for the new run.
type RerunRequest struct {
	FromStep          string  `json:"fromStep"`
	CustomPrompt      *string `json:"customPrompt,omitempty"`
	ContextWindowDays *int    `json:"contextWindowDays,omitempty"`
	MaxIterations     *int    `json:"maxIterations,omitempty"`
	ModelOverride     *string `json:"modelOverride,omitempty"`
}

// edits reports whether the re-run changes the request.
func (r RerunRequest) edits() bool {
	return r.CustomPrompt != nil || r.ContextWindowDays != nil || r.MaxIterations != nil || r.ModelOverride != nil
}

// RerunResult is the answer to a re-run: the new run as a send answers it,
// with the step it starts from and the steps it keeps.
type RerunResult struct {
	tasks.SendResult
	FromStep string `json:"fromStep"`
	// PreviousEventID is the run whose completed steps are kept.
	PreviousEventID string `json:"previousEventId"`
	// Reused are the steps before FromStep that completed in the previous
	// run: the new run does not run them again.
	Reused []string `json:"reused"`
}

// Rerun starts a new run of a job that has ended (completed, failed or
// cancelled) from req.FromStep: the steps before it that completed in the
// previous run are kept, that step and the ones after it run, with the
// request fields req edits. It goes through the producer's Send like any
// run. ErrNotFound for an unknown job, ErrConflict for a live one; a bad
// field is a *tasks.FieldError naming it as the producer wrote it
// ("eventData.customPrompt", "fromStep").
func (o *Operator) Rerun(ctx context.Context, jobID string, req RerunRequest) (*RerunResult, error) {
	if o.cfg.Store == nil {
		return nil, ErrNoStore
	}
	if o.cfg.Client == nil {
		return nil, ErrNoClient
	}
	job, err := o.cfg.Store.GetJob(ctx, jobID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFoundf("job %s not found", jobID)
	}
	if err != nil {
		return nil, storeErr(err)
	}
	if tasks.Live(job.Status) {
		return nil, conflictf("job %s is %s: a re-run starts once its run has ended (cancel it first)", jobID, job.Status)
	}
	if req.edits() && slices.Index(tasks.Steps, req.FromStep) > slices.Index(tasks.Steps, tasks.StepProcessInsights) {
		// The request is read by process-insights: kept, it would ignore
		// the edit.
		return nil, &tasks.FieldError{Field: "fromStep", Message: "edited request fields are used from " +
			tasks.StepProcessInsights + " on: re-run from it or an earlier step"}
	}
	send := &tasks.Send{Data: tasks.EventData{JobID: job.ID, ContextWindowDays: req.ContextWindowDays,
		MaxIterations: req.MaxIterations}, Priority: job.Priority, FromStep: req.FromStep}
	if req.CustomPrompt != nil {
		send.Data.CustomPrompt = *req.CustomPrompt
	}
	if req.ModelOverride != nil {
		send.Data.ModelOverride = *req.ModelOverride
	}
	if send.FromStep == "" {
		return nil, &tasks.FieldError{Field: "fromStep", Message: "is required: the step to run again from"}
	}
	res, err := o.cfg.Client.Send(ctx, send)
	if err != nil {
		if errors.Is(err, tasks.ErrInvalidEvent) {
			return nil, err
		}
		return nil, err
	}
	if res.SendStatus == "duplicate" {
		return nil, conflictf("job %s started another run meanwhile (event %s)", jobID, res.EventID)
	}
	out := &RerunResult{SendResult: *res, FromStep: req.FromStep, PreviousEventID: job.EventID, Reused: []string{}}
	for _, name := range tasks.Steps {
		if name == req.FromStep {
			break
		}
		if st, ok := job.Steps[name]; ok && st.Status == store.StepCompleted {
			out.Reused = append(out.Reused, name)
		}
	}
	o.log.Info("job re-run", "jobId", jobID, "eventId", res.EventID, "previous", job.EventID, "fromStep", req.FromStep, "reused", out.Reused)
	return out, nil
}
