package tasks

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestRetryWithoutBudget(t *testing.T) {
	cause := errors.New("mongodb unreachable")
	err := fmt.Errorf("update system: %w", RetryWithoutBudget(12*time.Second, cause))
	if IsFailure(err) {
		t.Error("IsFailure: a retry without budget is no failure")
	}
	if got := (RetryPolicy{}).RetryDelayFunc(3, err, nil); got != 12*time.Second {
		t.Errorf("RetryDelayFunc: %v, want 12s", got)
	}
	if !errors.Is(err, cause) || err.Error() != "update system: mongodb unreachable" {
		t.Errorf("cause lost: %v", err)
	}
	if d := RetryWithoutBudget(-time.Second, nil).(*NotAFailureError).Delay; d != 0 {
		t.Errorf("negative delay kept: %v", d)
	}
}
