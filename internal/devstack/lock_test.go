package devstack

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
)

// A second serve on one DATA_DIR is refused with the holder's pid, and the
// directory is free again once the first lets go.
func TestLockDirRefusesASecondHolder(t *testing.T) {
	dir := t.TempDir()
	unlock, err := LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = LockDir(dir)
	if !errors.Is(err, ErrDirInUse) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second lock: %v, want ErrDirInUse naming pid %d", err, os.Getpid())
	}
	unlock()
	again, err := LockDir(dir)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	again()
}
