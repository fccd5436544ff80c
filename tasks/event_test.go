package tasks

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// An event the API receives is refused, naming the field, either where it
// is read (ParseEnvelope: JSON, types, names) or at the gate every send
// passes (Send.Validate: the filter and the ranges).
func TestEventRefusedNamingTheField(t *testing.T) {
	big := strings.Repeat("x", MaxCustomPromptLen+1)
	for _, tc := range []struct {
		name, body string
		sentinel   error
		field      string
	}{
		{"no id, no data", `{"eventName":"generate-insights","eventData":{}}`, ErrInvalidEvent, "eventData.jobId"},
		{"data without system", `{"eventName":"generate-insights","eventData":{"analysisData":{}}}`, ErrInvalidEvent, "eventData.systemId"},
		{"system without data", `{"eventName":"generate-insights","eventData":{"systemId":"s1"}}`, ErrInvalidEvent, "eventData.analysisData"},
		{"empty jobId", `{"eventName":"generate-insights","eventData":{"jobId":""}}`, ErrInvalidEvent, "eventData.jobId"},
		{"bad jobId", `{"eventName":"generate-insights","eventData":{"jobId":"a b"}}`, ErrInvalidEvent, "eventData.jobId"},
		{"long jobId", `{"eventName":"generate-insights","eventData":{"jobId":"` + strings.Repeat("a", 129) + `"}}`, ErrInvalidEvent, "eventData.jobId"},
		{"empty systemId", `{"eventName":"generate-insights","eventData":{"systemId":"","analysisData":{}}}`, ErrInvalidEvent, "eventData.systemId"},
		{"bad modelOverride", `{"eventName":"generate-insights","eventData":{"jobId":"j","modelOverride":"gemini 2.5"}}`, ErrInvalidEvent, "eventData.modelOverride"},
		{"bad systemId", `{"eventName":"generate-insights","eventData":{"systemId":"s/1","analysisData":{}}}`, ErrInvalidEvent, "eventData.systemId"},
		{"window 0", `{"eventName":"generate-insights","eventData":{"jobId":"j","contextWindowDays":0}}`, ErrInvalidEvent, "eventData.contextWindowDays"},
		{"window 366", `{"eventName":"generate-insights","eventData":{"jobId":"j","contextWindowDays":366}}`, ErrInvalidEvent, "eventData.contextWindowDays"},
		{"window string", `{"eventName":"generate-insights","eventData":{"jobId":"j","contextWindowDays":"5"}}`, ErrInvalidEvent, "eventData.contextWindowDays"},
		{"window float", `{"eventName":"generate-insights","eventData":{"jobId":"j","contextWindowDays":5.5}}`, ErrInvalidEvent, "eventData.contextWindowDays"},
		{"iterations 51", `{"eventName":"generate-insights","eventData":{"jobId":"j","maxIterations":51}}`, ErrInvalidEvent, "eventData.maxIterations"},
		{"iterations 0", `{"eventName":"generate-insights","eventData":{"jobId":"j","maxIterations":0}}`, ErrInvalidEvent, "eventData.maxIterations"},
		{"soc 150", `{"eventName":"generate-insights","eventData":{"systemId":"s","analysisData":{"stateOfCharge":150}}}`, ErrInvalidEvent, "eventData.analysisData.stateOfCharge"},
		{"prompt too long", `{"eventName":"generate-insights","eventData":{"jobId":"j","customPrompt":"` + big + `"}}`, ErrInvalidEvent, "eventData.customPrompt"},
		{"soc as string", `{"eventName":"generate-insights","eventData":{"systemId":"s","analysisData":{"stateOfCharge":"80"}}}`, ErrInvalidEvent, "eventData.analysisData.stateOfCharge"},
		{"fullContext as string", `{"eventName":"generate-insights","eventData":{"jobId":"j","fullContextMode":"yes"}}`, ErrInvalidEvent, "eventData.fullContextMode"},
		{"priority 11", `{"eventName":"generate-insights","eventData":{"jobId":"j"},"priority":11}`, ErrInvalidEvent, "priority"},
		{"priority -1", `{"eventName":"generate-insights","eventData":{"jobId":"j"},"priority":-1}`, ErrInvalidEvent, "priority"},
		{"priority string", `{"eventName":"generate-insights","eventData":{"jobId":"j"},"priority":"5"}`, ErrInvalidEvent, "priority"},
		{"bad delayUntil", `{"eventName":"generate-insights","eventData":{"jobId":"j"},"delayUntil":"tomorrow"}`, ErrInvalidEvent, "delayUntil"},
		{"no eventData", `{"eventName":"generate-insights"}`, ErrInvalidEvent, "eventData"},
		{"unknown event", `{"eventName":"make-coffee","eventData":{"jobId":"j"}}`, ErrUnknownEvent, ""},
		{"no event name", `{"eventData":{"jobId":"j"}}`, ErrMalformed, "eventName"},
		{"not json", `{"eventName":`, ErrMalformed, ""},
		{"trailing data", `{"eventName":"generate-insights","eventData":{"jobId":"j"}} {}`, ErrMalformed, ""},
		{"array body", `[1]`, ErrMalformed, ""},
		{"eventData array", `{"eventName":"generate-insights","eventData":[1]}`, ErrMalformed, "eventData"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseEnvelope([]byte(tc.body))
			if err == nil {
				err = s.Validate()
			}
			if !errors.Is(err, tc.sentinel) {
				t.Fatalf("err = %v, want %v", err, tc.sentinel)
			}
			if got := FieldOf(err); got != tc.field {
				t.Errorf("field = %q, want %q (err %v)", got, tc.field, err)
			}
			if tc.field != "" && !strings.Contains(err.Error(), tc.field) {
				t.Errorf("message %q does not name %q", err, tc.field)
			}
		})
	}
}

func TestParseEnvelopeAccepts(t *testing.T) {
	s, err := ParseEnvelope([]byte(`{"eventName":"generate-insights","eventData":{"systemId":"sys-1","analysisData":{"stateOfCharge":55.5},"contextWindowDays":30},"priority":9,"delayUntil":1893456000000}`))
	if err != nil {
		t.Fatal(err)
	}
	// Request gives what the event set; WithDefaults fills the rest.
	if raw := s.Data.Request(); raw.MaxIterations != 0 || raw.ContextWindowDays != 30 {
		t.Errorf("Request filled defaults: %+v", raw)
	}
	r := s.Data.Request().WithDefaults()
	if s.Priority != 9 || r.ContextWindowDays != 30 || r.MaxIterations != DefaultMaxIterations || r.AnalysisData == nil || r.AnalysisData.StateOfCharge == nil || *r.AnalysisData.StateOfCharge != 55.5 {
		t.Errorf("parsed %+v %+v", s, r)
	}
	if !s.At.Equal(time.UnixMilli(1893456000000)) {
		t.Errorf("at %v", s.At)
	}
	for _, raw := range []string{`"2030-01-01T00:00:00Z"`, `"1893456000000"`, `1893456000000`} {
		at, err := parseDelayUntil([]byte(raw))
		if err != nil || !at.Equal(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)) {
			t.Errorf("delayUntil %s → %v %v", raw, at, err)
		}
	}
	s, err = ParseEnvelope([]byte(`{"eventName":"generate-insights","eventData":{"jobId":"only-id"}}`))
	if err != nil || s.Data.HasRequest() || s.Priority != DefaultPriority {
		t.Errorf("jobId only: %+v %v", s, err)
	}
	// A model override is carried into the request; a null systemId is absent.
	s, err = ParseEnvelope([]byte(`{"eventName":"generate-insights","eventData":{"jobId":"j","systemId":null,"modelOverride":"gemini-2.5-flash"}}`))
	if err != nil || s.Data.Request().ModelOverride != "gemini-2.5-flash" || s.Data.SystemID != "" {
		t.Errorf("modelOverride: %+v %v", s, err)
	}
}

func TestQueueFor(t *testing.T) {
	want := map[int]string{0: "low", 3: "low", 4: "default", 6: "default", 7: "high", 8: "high", 9: "critical", 10: "critical"}
	for p, q := range want {
		if got := QueueFor(p); got != q {
			t.Errorf("QueueFor(%d) = %s, want %s", p, got, q)
		}
	}
}
