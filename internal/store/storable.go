package store

import "github.com/bmsview/insights/tasks"

// checkStorable refuses, before anything is written, a run whose request
// the store cannot hold (a *tasks.FieldError naming the field, so the send
// is answered 422, never retried as an outage): what no MongoDB holds and,
// on FerretDB v1, the nested arrays it cannot store.
func (s *Store) checkStorable(run tasks.Run) error {
	if run.Request == nil {
		return nil
	}
	if s.ferret {
		return tasks.CheckSnapshotFerretDB("eventData.analysisData", run.Request.AnalysisData)
	}
	return tasks.CheckSnapshot("eventData.analysisData", run.Request.AnalysisData)
}
