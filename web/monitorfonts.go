package web

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
)

// externalFonts are the stylesheet links of asynqmon's page to Google's
// fonts: the page would load them from another origin on every visit
// (Roboto, which falls back to the system's sans-serif, and Material
// Icons, which its build does not use: its icons are inline SVG).
var externalFonts = regexp.MustCompile(`<link[^>]+href="https://fonts\.googleapis\.com/[^"]*"[^>]*>`)

// selfContainedMonitor serves asynqmon's UI pages without the external
// font links; its API and static files pass through untouched.
func selfContainedMonitor(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := strings.TrimPrefix(r.URL.Path, monitorRoot)
		if !readOnlyMethod(r.Method) || strings.HasPrefix(p, "/api/") || strings.HasPrefix(p, "/static/") || strings.Contains(p, ".") {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html") {
			body = externalFonts.ReplaceAll(body, nil)
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Code)
		_, _ = bytes.NewReader(body).WriteTo(w)
	})
}
