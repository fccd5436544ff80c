package config

import (
	"net/url"
	"os"
	"sort"
	"strings"
)

// redacted stands in for a secret in a message.
const redacted = "xxxxx"

// secretVars hold a secret whole.
var secretVars = []string{"API_TOKEN", "ADMIN_PASSWORD", "VIEWER_PASSWORD", "GEMINI_API_KEY", "WEBHOOK_SECRET", "DATA_ENCRYPTION_KEY"}

// urlVars are URLs that may carry a password.
var urlVars = []string{"REDIS_URL", "MONGODB_URI", "COMPLETION_WEBHOOK_URL", "GEMINI_BASE_URL"}

// Secrets are the strings of the environment a message must never show:
// the credential variables and the passwords of the store URLs, as
// written and percent-decoded, read even from a URL that does not parse.
// getenv nil: os.Getenv.
func Secrets(getenv func(string) string) []string {
	if getenv == nil {
		getenv = os.Getenv
	}
	var out []string
	for _, name := range secretVars {
		v := strings.TrimSpace(getenv(name))
		if v == "" {
			continue
		}
		out = append(out, v)
		if name == "API_TOKEN" { // several tokens, comma-separated
			for _, t := range strings.Split(v, ",") {
				if t = strings.TrimSpace(t); t != "" && t != v {
					out = append(out, t)
				}
			}
		}
	}
	for _, name := range urlVars {
		out = append(out, urlSecrets(strings.TrimSpace(getenv(name)))...)
	}
	return out
}

// urlSecrets are the password of raw (or its whole user part when it has
// no password), as written and decoded. raw need not parse: the user part
// is what lies between "://" and the last "@".
func urlSecrets(raw string) []string {
	_, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return nil
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return nil
	}
	userinfo := rest[:at]
	secret := userinfo
	if _, pw, ok := strings.Cut(userinfo, ":"); ok {
		secret = pw
	}
	if secret == "" {
		return nil
	}
	out := []string{secret}
	if dec, err := url.PathUnescape(secret); err == nil && dec != secret {
		out = append(out, dec)
	}
	if dec, err := url.QueryUnescape(secret); err == nil && dec != secret {
		out = append(out, dec)
	}
	return out
}

// Redact replaces every secret in msg with xxxxx, the longest first (a
// password may contain a shorter one).
func Redact(msg string, secrets []string) string {
	s := append([]string(nil), secrets...)
	sort.Slice(s, func(i, j int) bool { return len(s[i]) > len(s[j]) })
	for _, v := range s {
		if v != "" && v != redacted {
			msg = strings.ReplaceAll(msg, v, redacted)
		}
	}
	return msg
}
