package ops

import (
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/store"
)

// View returns a copy of job as the API, the pages and the CLI show it: its
// steps (an empty map when none) and its finalInsights and step outputs
// decrypted. It lives here, not in web, because Status carries the job and
// the CLI prints Status without web. nil: nil.
func (o *Operator) View(job *store.Job) *store.Job {
	if job == nil {
		return nil
	}
	v := *job
	if v.Steps == nil {
		v.Steps = map[string]store.StepState{}
	}
	if o.cfg.Decrypt == nil {
		return &v
	}
	v.FinalInsights = o.open(job.ID, "finalInsights", job.FinalInsights)
	steps := make(map[string]store.StepState, len(job.Steps))
	for name, st := range job.Steps {
		st.Output = o.open(job.ID, "steps."+name+".output", st.Output)
		steps[name] = st
	}
	v.Steps = steps
	return &v
}

// RunView returns a copy of an ended run as the API and the job page show
// it: its finalInsights decrypted. nil: nil.
func (o *Operator) RunView(run *store.RunRecord) *store.RunRecord {
	if run == nil {
		return nil
	}
	v := *run
	if o.cfg.Decrypt != nil {
		v.FinalInsights = o.open(run.JobID, "insights-runs "+run.EventID+" finalInsights", run.FinalInsights)
	}
	return &v
}

// open decrypts stored when it is an encrypted envelope; on failure it is
// left as stored (and logged), so a wrong key hides no job.
func (o *Operator) open(jobID, what string, stored any) any {
	if !isEncrypted(stored) {
		return stored
	}
	v, err := o.cfg.Decrypt(stored)
	if err != nil {
		o.log.Warn("cannot decrypt stored value", "jobId", jobID, "field", what, "err", err)
		return stored
	}
	return v
}

// isEncrypted reports an {encrypted: true, ...} envelope in any of the
// shapes the driver decodes it to.
func isEncrypted(v any) bool {
	var b bool
	switch m := v.(type) {
	case map[string]any:
		b, _ = m["encrypted"].(bool)
	case bson.M:
		b, _ = m["encrypted"].(bool)
	case bson.D:
		for _, e := range m {
			if e.Key == "encrypted" {
				b, _ = e.Value.(bool)
			}
		}
	}
	return b
}
