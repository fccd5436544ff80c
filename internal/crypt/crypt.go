// Package crypt is the encryption at rest of stored insights (docs/DESIGN.md
// section 8): AES-256-GCM with a key derived by PBKDF2-SHA256 from
// DATA_ENCRYPTION_KEY, in the envelope the BMS app's Node code writes, so
// data either side encrypted decrypts on the other.
package crypt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
)

// Parameters of the BMS app's scheme (contract).
const (
	Algorithm  = "aes-256-gcm"
	Salt       = "bmsview-encryption-v1"
	Iterations = 100000
	KeyLen     = 32
	IVLen      = 16 // the Node code uses crypto.randomBytes(16)
	TagLen     = 16
	// MinKeyLen is the shortest DATA_ENCRYPTION_KEY accepted.
	MinKeyLen = 32
)

// ErrWrongKey is returned by Open when the envelope does not authenticate
// under this key: a different DATA_ENCRYPTION_KEY, or tampered data. Open
// never returns unauthenticated plaintext.
var ErrWrongKey = errors.New("crypt: cannot decrypt: wrong DATA_ENCRYPTION_KEY or corrupted data")

// ErrNotEnvelope is returned by Open for a value that is not an envelope of
// this scheme.
var ErrNotEnvelope = errors.New("crypt: not an aes-256-gcm envelope")

// Envelope is an encrypted value as stored (base64 fields).
type Envelope struct {
	Encrypted bool   `json:"encrypted" bson:"encrypted"`
	Algorithm string `json:"algorithm" bson:"algorithm"`
	Data      string `json:"data" bson:"data"`
	IV        string `json:"iv" bson:"iv"`
	AuthTag   string `json:"authTag" bson:"authTag"`
}

// Sealer encrypts and decrypts with one derived key. Safe for concurrent use.
type Sealer struct {
	aead cipher.AEAD
}

// New derives the key once (PBKDF2 is deliberately slow: keep the Sealer).
func New(key string) (*Sealer, error) {
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("crypt: DATA_ENCRYPTION_KEY must be at least %d characters (got %d)", MinKeyLen, len(key))
	}
	dk, err := pbkdf2.Key(sha256.New, key, []byte(Salt), Iterations, KeyLen)
	if err != nil {
		return nil, fmt.Errorf("crypt: derive key: %w", err)
	}
	block, err := aes.NewCipher(dk)
	if err != nil {
		return nil, fmt.Errorf("crypt: %w", err)
	}
	aead, err := cipher.NewGCMWithNonceSize(block, IVLen)
	if err != nil {
		return nil, fmt.Errorf("crypt: %w", err)
	}
	return &Sealer{aead: aead}, nil
}

// Seal JSON-encodes v and encrypts it with a fresh random IV.
func (s *Sealer) Seal(v any) (Envelope, error) {
	plain, err := json.Marshal(v)
	if err != nil {
		return Envelope{}, fmt.Errorf("crypt: encode: %w", err)
	}
	iv := make([]byte, IVLen)
	if _, err := rand.Read(iv); err != nil {
		return Envelope{}, fmt.Errorf("crypt: random iv: %w", err)
	}
	out := s.aead.Seal(nil, iv, plain, nil)
	ct, tag := out[:len(out)-TagLen], out[len(out)-TagLen:]
	return Envelope{
		Encrypted: true,
		Algorithm: Algorithm,
		Data:      base64.StdEncoding.EncodeToString(ct),
		IV:        base64.StdEncoding.EncodeToString(iv),
		AuthTag:   base64.StdEncoding.EncodeToString(tag),
	}, nil
}

// Open decrypts env and JSON-decodes the plaintext into out.
func (s *Sealer) Open(env Envelope, out any) error {
	plain, err := s.OpenBytes(env)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(plain, out); err != nil {
		return fmt.Errorf("crypt: decode plaintext: %w", err)
	}
	return nil
}

// OpenBytes decrypts env and returns the plaintext JSON.
func (s *Sealer) OpenBytes(env Envelope) ([]byte, error) {
	if !env.Encrypted || (env.Algorithm != "" && env.Algorithm != Algorithm) {
		return nil, ErrNotEnvelope
	}
	ct, err1 := base64.StdEncoding.DecodeString(env.Data)
	iv, err2 := base64.StdEncoding.DecodeString(env.IV)
	tag, err3 := base64.StdEncoding.DecodeString(env.AuthTag)
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotEnvelope, err)
	}
	if len(iv) != IVLen || len(tag) != TagLen {
		return nil, fmt.Errorf("%w: iv %d bytes, authTag %d bytes", ErrNotEnvelope, len(iv), len(tag))
	}
	plain, err := s.aead.Open(nil, iv, append(ct, tag...), nil)
	if err != nil {
		return nil, ErrWrongKey
	}
	return plain, nil
}

// IsEnvelope reports whether v (a decoded document: map[string]any, bson.M,
// bson.D converted to a map, or an Envelope) is an encrypted envelope.
func IsEnvelope(v any) bool {
	switch e := v.(type) {
	case Envelope:
		return e.Encrypted
	case *Envelope:
		return e != nil && e.Encrypted
	case map[string]any:
		enc, _ := e["encrypted"].(bool)
		alg, _ := e["algorithm"].(string)
		_, hasData := e["data"].(string)
		_, hasIV := e["iv"].(string)
		_, hasTag := e["authTag"].(string)
		return enc && alg == Algorithm && hasData && hasIV && hasTag
	}
	return false
}

// EnvelopeOf converts a stored value, as decoded from MongoDB or JSON, to
// an Envelope (ok false when it is not one).
func EnvelopeOf(stored any) (Envelope, bool) {
	m, ok := stored.(map[string]any)
	if !ok || !IsEnvelope(m) {
		return Envelope{}, false
	}
	return Envelope{
		Encrypted: true,
		Algorithm: m["algorithm"].(string),
		Data:      m["data"].(string),
		IV:        m["iv"].(string),
		AuthTag:   m["authTag"].(string),
	}, true
}
