package web

// The BMS app's status poll (docs/DESIGN.md section 12), answered in the shape
// of its own netlify/functions/generate-insights-status.cjs, which its
// front end reads: the failure categories, suggestions and stage lines are
// that function's, word for word, so the app's screens read the same.

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// StatusPathBMS is the BMS app's status route.
const StatusPathBMS = "/.netlify/functions/generate-insights-status"

// bmsStatus is the answer of the status route. Fields are left out as the
// app's function leaves them out for each status.
type bmsStatus struct {
	JobID string `json:"jobId"`
	// Status is one of the four the app's front end knows (queued,
	// processing, completed, failed): any other would keep its poll going
	// until it gives up. WorkloadStatus is this service's own.
	Status         string    `json:"status"`
	WorkloadStatus string    `json:"workloadStatus"`
	CreatedAt      time.Time `json:"createdAt"`
	UpdatedAt      time.Time `json:"updatedAt"`

	// completed. The app's function answers `insights`; its front end
	// waits for `finalInsights`: both are sent.
	Insights      any           `json:"insights,omitempty"`
	FinalInsights any           `json:"finalInsights,omitempty"`
	CompletedAt   *time.Time    `json:"completedAt,omitempty"`
	Metadata      *bmsTurnsInfo `json:"metadata,omitempty"`

	// failed
	Error             *string              `json:"error,omitempty"`
	FailedAt          *time.Time           `json:"failedAt,omitempty"`
	FailureReason     string               `json:"failureReason,omitempty"`
	FailureCategory   string               `json:"failureCategory,omitempty"`
	Suggestions       []string             `json:"suggestions,omitempty"`
	LastProgressEvent *store.ProgressEvent `json:"lastProgressEvent,omitempty"`

	// processing
	Progress        []store.ProgressEvent `json:"progress,omitempty"`
	PartialInsights any                   `json:"partialInsights,omitempty"`
	ProgressCount   *int                  `json:"progressCount,omitempty"`
	CurrentStage    string                `json:"currentStage,omitempty"`
}

type bmsTurnsInfo struct {
	Turns     int `json:"turns"`
	ToolCalls int `json:"toolCalls"`
}

// bmsStatusRoute is GET ?jobId= and POST {jobId} of the status route.
func (s *Server) bmsStatusRoute(w http.ResponseWriter, r *http.Request) {
	jobID := ""
	if r.Method == http.MethodPost && r.ContentLength != 0 {
		var body struct {
			JobID string `json:"jobId"`
		}
		b, _ := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
		if len(strings.TrimSpace(string(b))) > 0 {
			_ = json.Unmarshal(b, &body) // invalid JSON: no jobId, 400 below (the app's rule)
			jobID = body.JobID
		} else {
			jobID = r.URL.Query().Get("jobId")
		}
	} else {
		jobID = r.URL.Query().Get("jobId")
	}
	if jobID == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "jobId is required"})
		return
	}
	if s.cfg.Store == nil {
		s.writeErr(w, r, ops.ErrNoStore)
		return
	}
	raw, err := s.cfg.Store.GetJob(r.Context(), jobID)
	if errors.Is(err, store.ErrNotFound) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "Job not found", "jobId": jobID})
		return
	}
	if err != nil {
		s.writeErr(w, r, storeErr(err))
		return
	}
	writeJSON(w, http.StatusOK, s.bmsStatusOf(s.ops.View(raw)))
}

// AppStatus is a job status in the BMS app's four: scheduled is queued,
// retrying is processing, cancelled is failed (with the reason).
func AppStatus(status string) string {
	switch status {
	case tasks.StatusScheduled:
		return tasks.StatusQueued
	case tasks.StatusRetrying:
		return tasks.StatusProcessing
	case tasks.StatusCancelled:
		return tasks.StatusFailed
	}
	return status
}

// cancelledReason is the error the app reads for a cancelled job.
const cancelledReason = "The analysis was cancelled by an operator"

func (s *Server) bmsStatusOf(job *store.Job) *bmsStatus {
	st := &bmsStatus{JobID: job.ID, Status: AppStatus(job.Status), WorkloadStatus: job.Status, CreatedAt: job.CreatedAt, UpdatedAt: job.UpdatedAt}
	n := len(job.Progress)
	var last *store.ProgressEvent
	if n > 0 {
		last = &job.Progress[n-1]
	}
	switch job.Status {
	case tasks.StatusCancelled:
		msg := cancelledReason
		if job.Error != nil && *job.Error != "" {
			msg += ": " + *job.Error
		}
		st.Error = &msg
		at := job.UpdatedAt
		st.FailedAt = &at
		st.FailureReason, st.FailureCategory = cancelledReason, "unknown"
		st.Suggestions = []string{"Start the analysis again if it is still needed"}
		if last != nil {
			st.LastProgressEvent, st.ProgressCount = last, &n
		}
	case tasks.StatusCompleted:
		st.Insights, st.FinalInsights = job.FinalInsights, job.FinalInsights
		at := job.UpdatedAt
		if job.CompletedAt != nil {
			at = *job.CompletedAt
		}
		st.CompletedAt = &at
		md := finalOf(job.FinalInsights).Metadata
		st.Metadata = &bmsTurnsInfo{Turns: md.Turns, ToolCalls: md.ToolCalls}
	case tasks.StatusFailed:
		st.Error = job.Error
		at := job.FailedAt()
		st.FailedAt = &at
		msg := ""
		if job.Error != nil {
			msg = *job.Error
		}
		fr := failureReason(msg, job.Progress)
		st.FailureReason, st.FailureCategory, st.Suggestions = fr.reason, fr.category, fr.suggestions
		if last != nil {
			st.LastProgressEvent, st.ProgressCount = last, &n
		}
	case tasks.StatusProcessing, tasks.StatusRetrying:
		st.Progress = job.Progress
		if st.Progress == nil {
			st.Progress = []store.ProgressEvent{}
		}
		st.PartialInsights = job.PartialInsights
		st.ProgressCount = &n
		if last != nil {
			st.CurrentStage = stageOf(*last)
		}
		if job.Status == tasks.StatusRetrying && job.Failure != nil {
			st.CurrentStage = "🔁 Retrying after: " + job.Failure.Message
		}
	case tasks.StatusScheduled:
		if job.Waiting != nil {
			// A run waiting for flow control: the app's poll shows why,
			// with the progress so far, as for a run under way.
			st.Progress, st.ProgressCount = job.Progress, &n
			st.CurrentStage = "⏳ Waiting: " + job.Waiting.Reason
		}
	}
	return st
}

type failure struct {
	reason, category string
	suggestions      []string
}

// failureReason is the app's extractFailureReason: the first rule whose
// words the message holds wins, in the app's order.
func failureReason(errorMessage string, progress []store.ProgressEvent) failure {
	m := strings.ToLower(errorMessage)
	has := func(words ...string) bool {
		for _, w := range words {
			if strings.Contains(m, w) {
				return true
			}
		}
		return false
	}
	reason := errorMessage
	if reason == "" {
		reason = "Unknown error occurred"
	}
	res := failure{reason: reason, category: "unknown",
		suggestions: []string{"Try again in a few moments", "Check if the system has sufficient data"}}
	switch {
	case has("timeout", "timed out"):
		res = failure{"The analysis took too long to complete", "timeout", []string{"Reduce the time range for analysis",
			"Ask a more specific question instead of a broad analysis", "Break complex queries into multiple simpler questions"}}
	case has("rate limit", "quota"):
		res = failure{"AI service rate limit exceeded", "rate_limit", []string{"Wait 1-2 minutes before trying again",
			"Reduce the frequency of analysis requests"}}
	case has("token", "context length", "too large"):
		res = failure{"The amount of data exceeded AI processing limits", "token_limit", []string{"Reduce the analysis time range",
			"Focus on a specific date range or metric", "Use a shorter custom prompt"}}
	case has("mongodb", "database", "connection"):
		res = failure{"Database connection issue", "database", []string{"This is usually temporary - try again in a moment",
			"If the issue persists, the system may be undergoing maintenance"}}
	case has("gemini", "api", "model"):
		res = failure{"AI service encountered an error", "ai_service", []string{"Try again in a few moments",
			"If the issue persists, the AI service may be experiencing issues"}}
	case has("network", "econnrefused", "fetch"):
		res = failure{"Network connectivity issue", "network", []string{"Check your internet connection", "Try again in a moment"}}
	case has("circuit", "circuit_open"):
		res = failure{"Service temporarily unavailable due to high load", "circuit_breaker", []string{"Wait 30-60 seconds before trying again",
			"The system is protecting itself from overload"}}
	}
	if n := len(progress); n > 0 {
		if last := progress[n-1]; last.Type == "error" {
			if msg, _ := last.Data["message"].(string); msg != "" && !strings.Contains(res.reason, msg) {
				res.reason += " (" + msg + ")"
			}
		}
		for _, ev := range progress {
			if ev.Type != "tool_call" || ev.Data["error"] == nil {
				continue
			}
			tool, _ := ev.Data["toolName"].(string)
			if tool == "" {
				tool = "unknown tool"
			}
			res.reason = "Tool execution failed: " + tool
			res.suggestions = append([]string{"The specific tool that failed may have had data issues"}, res.suggestions...)
			break
		}
	}
	return res
}

// stageOf is the app's formatCurrentStage: a human line for a progress
// event.
func stageOf(ev store.ProgressEvent) string {
	str := func(k string) string { v, _ := ev.Data[k].(string); return v }
	num := func(k string) string {
		switch v := ev.Data[k].(type) {
		case int, int32, int64, float64:
			b, _ := json.Marshal(v)
			return string(b)
		}
		return "?"
	}
	switch ev.Type {
	case "tool_call":
		tool := str("toolName")
		if tool == "" {
			tool = "unknown"
		}
		return "🔧 Fetching " + toolTitle(tool) + "..."
	case "tool_response":
		return "✓ Data received, analyzing..."
	case "ai_response":
		return "🤖 AI generating insights..."
	case "iteration":
		return "📈 Analysis iteration " + num("iteration") + "/" + num("maxIterations")
	case "status":
		if m := str("message"); m != "" {
			return m
		}
		return "Processing..."
	case "error":
		if m := str("message"); m != "" {
			return "⚠️ " + m
		}
		return "⚠️ Error encountered"
	}
	return "Processing..."
}

// toolTitle is the app's formatToolName.
func toolTitle(name string) string {
	switch strings.ToLower(name) {
	case "request_bms_data":
		return "BMS historical data"
	case "calculate_energy_budget":
		return "energy budget"
	case "predict_battery_trends":
		return "trend predictions"
	case "analyze_usage_patterns":
		return "usage patterns"
	case "getweatherdata":
		return "weather data"
	case "getsolarestimate":
		return "solar estimates"
	case "getsystemanalytics":
		return "system analytics"
	case "get_hourly_soc_predictions":
		return "SOC predictions"
	}
	return name
}
