package crypt

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

const testKey = "test-key-0123456789abcdefghijklmnopqrstuvwxyz"

func TestNewRejectsShortKey(t *testing.T) {
	_, err := New(strings.Repeat("k", 31))
	if err == nil || !strings.Contains(err.Error(), "DATA_ENCRYPTION_KEY") {
		t.Fatalf("want error naming DATA_ENCRYPTION_KEY, got %v", err)
	}
	if _, err := New(strings.Repeat("k", 32)); err != nil {
		t.Fatalf("32 chars must be accepted: %v", err)
	}
}

func TestRoundTrip(t *testing.T) {
	s, err := New(testKey)
	if err != nil {
		t.Fatal(err)
	}
	in := map[string]any{"healthScore": 92.5, "status": "Normal", "findings": []any{"a", "b"}}
	env, err := s.Seal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !env.Encrypted || env.Algorithm != "aes-256-gcm" || env.Data == "" || env.IV == "" || env.AuthTag == "" {
		t.Fatalf("bad envelope %+v", env)
	}
	if strings.Contains(env.Data, "Normal") {
		t.Fatal("plaintext visible")
	}
	// IVs are fresh per seal.
	env2, _ := s.Seal(in)
	if env2.IV == env.IV {
		t.Fatal("IV reused")
	}
	var out map[string]any
	if err := s.Open(env, &out); err != nil {
		t.Fatal(err)
	}
	if out["status"] != "Normal" || out["healthScore"] != 92.5 {
		t.Fatalf("round trip: %v", out)
	}
	// The envelope's JSON shape is the contract.
	b, _ := json.Marshal(env)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	for _, k := range []string{"encrypted", "algorithm", "data", "iv", "authTag"} {
		if _, ok := m[k]; !ok {
			t.Fatalf("envelope JSON lacks %q: %s", k, b)
		}
	}
	if !IsEnvelope(m) {
		t.Fatal("IsEnvelope(decoded map) = false")
	}
	e2, ok := EnvelopeOf(m)
	if !ok || e2 != env {
		t.Fatalf("EnvelopeOf: %+v %v", e2, ok)
	}
	if IsEnvelope(map[string]any{"healthScore": 1}) || IsEnvelope(map[string]any{"encrypted": false}) {
		t.Fatal("IsEnvelope true for plain data")
	}
}

// nodeVector was produced once with Node's crypto module (the BMS app's
// scheme): pbkdf2Sync(key, 'bmsview-encryption-v1', 100000, 32, 'sha256'),
// createCipheriv('aes-256-gcm', key, randomBytes(16)), base64 output.
const (
	nodeKey    = "node-vector-key-0123456789abcdefghij"
	nodeVector = `{"encrypted":true,"algorithm":"aes-256-gcm","data":"9KMKQvZYbN0w4VhGvxow7j2n66M3p/eaG40zjpDhe3NGZ75jXnh6czYP+Yqde1JxjIItCAUtIDPwZ8U=","iv":"3yIVoDs4OcysqJGuSY2eMg==","authTag":"Nu8t+I3w+5uWzmYi4eLoMw=="}`
)

func TestNodeVector(t *testing.T) {
	s, err := New(nodeKey)
	if err != nil {
		t.Fatal(err)
	}
	var env Envelope
	if err := json.Unmarshal([]byte(nodeVector), &env); err != nil {
		t.Fatal(err)
	}
	var out struct {
		HealthScore float64 `json:"healthScore"`
		Status      string  `json:"status"`
		Note        string  `json:"note"`
	}
	if err := s.Open(env, &out); err != nil {
		t.Fatal(err)
	}
	if out.HealthScore != 87 || out.Status != "Warning" || out.Note != "ünïcode ok" {
		t.Fatalf("node vector decrypted to %+v", out)
	}
}

func TestWrongKey(t *testing.T) {
	a, _ := New(testKey)
	b, _ := New(testKey + "-other")
	env, err := a.Seal("secret")
	if err != nil {
		t.Fatal(err)
	}
	var out string
	if err := b.Open(env, &out); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("want ErrWrongKey, got %v (out %q)", err, out)
	}
	if out != "" {
		t.Fatal("garbage written on wrong key")
	}
	// Tampered data fails the same way.
	env.Data = "AAAA" + env.Data[4:]
	if err := a.Open(env, &out); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("tampered: want ErrWrongKey, got %v", err)
	}
	if err := a.Open(Envelope{}, &out); !errors.Is(err, ErrNotEnvelope) {
		t.Fatalf("empty envelope: %v", err)
	}
}
