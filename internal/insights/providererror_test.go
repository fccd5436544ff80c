package insights

import (
	"errors"
	"testing"
	"time"
)

// A provider's failure says what it means for a retry (the runner reads
// these methods, never the message).
func TestProviderErrorSaysWhatItMeans(t *testing.T) {
	for _, c := range []struct {
		name                 string
		err                  *ProviderError
		permanent, temporary bool
		limited              bool
		delay                time.Duration
	}{
		{"429 with Retry-After", &ProviderError{StatusCode: 429, RetryAfter: 17 * time.Second}, false, false, true, 17 * time.Second},
		{"429 without a delay", &ProviderError{StatusCode: 429}, false, false, true, 0},
		{"quota without an HTTP answer", &ProviderError{Err: errors.New("Quota exceeded for model")}, false, false, true, 0},
		{"RESOURCE_EXHAUSTED text", &ProviderError{StatusCode: 0, Err: errors.New("RESOURCE_EXHAUSTED")}, false, false, true, 0},
		{"500", &ProviderError{StatusCode: 500}, false, true, false, 0},
		{"503 mentioning quota", &ProviderError{StatusCode: 503, Err: errors.New("quota backend down")}, false, true, false, 0},
		{"400", &ProviderError{StatusCode: 400}, true, false, false, 0},
		{"401", &ProviderError{StatusCode: 401}, true, false, false, 0},
		{"403 mentioning quota", &ProviderError{StatusCode: 403, Err: errors.New("quota project disabled")}, true, false, false, 0},
		{"404", &ProviderError{StatusCode: 404}, true, false, false, 0},
		{"409", &ProviderError{StatusCode: 409}, false, false, false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, limited := c.err.RateLimited()
			if c.err.Permanent() != c.permanent || c.err.Temporary() != c.temporary || limited != c.limited || d != c.delay {
				t.Errorf("permanent %v temporary %v rate limited %v (%v); want %v %v %v (%v)",
					c.err.Permanent(), c.err.Temporary(), limited, d, c.permanent, c.temporary, c.limited, c.delay)
			}
		})
	}
}
