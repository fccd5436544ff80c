package web

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// The users a request is authenticated as (userOf).
const (
	// AdminUser is the HTTP Basic user of ADMIN_PASSWORD: may do anything.
	AdminUser = "admin"
	// ViewerUser is the HTTP Basic user of VIEWER_PASSWORD: read-only.
	ViewerUser = "viewer"
	// TokenUser stands for a caller with the Bearer API_TOKEN (a script or
	// the BMS app): may do anything.
	TokenUser = "api-token"
)

type credKind int

const (
	credNone credKind = iota
	credBearer
	credBasic
)

// userKey is the request context key of the authenticated user.
type userKey struct{}

// userOf is the user the request was authenticated as: AdminUser,
// TokenUser, ViewerUser, or "" (an open route).
func userOf(r *http.Request) string {
	u, _ := r.Context().Value(userKey{}).(string)
	return u
}

// mayAct reports whether the request's user may change state: the admin
// and the API token, not the viewer.
func mayAct(r *http.Request) bool {
	u := userOf(r)
	return u == AdminUser || u == TokenUser
}

// readOnlyMethod is what the viewer may send.
func readOnlyMethod(m string) bool { return m == http.MethodGet || m == http.MethodHead }

// authenticate checks the request's Authorization header against the
// configured credentials in constant time and returns the user they
// identify ("" when none).
func (s *Server) authenticate(r *http.Request) (credKind, string) {
	h := r.Header.Get("Authorization")
	scheme, value, _ := strings.Cut(h, " ")
	value = strings.TrimSpace(value)
	switch strings.ToLower(scheme) {
	case "bearer":
		// API_TOKEN may hold several tokens (a key rotating, as the app's
		// AWL_API_KEY_P0..Pn do): each is compared, none short-circuits.
		ok := false
		for _, t := range strings.Split(s.cfg.APIToken, ",") {
			if t = strings.TrimSpace(t); t != "" && equal(value, t) {
				ok = true
			}
		}
		if ok {
			return credBearer, TokenUser
		}
		return credBearer, ""
	case "basic":
		raw, err := base64.StdEncoding.DecodeString(value)
		if err != nil {
			return credBasic, ""
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok {
			return credBasic, ""
		}
		return credBasic, s.basicUser(user, pass)
	}
	return credNone, ""
}

// basicUser is the user of Basic credentials, "" when they match none.
// Every comparison is made, always, and none short-circuits, so timing
// tells neither which user was tried nor which part was wrong.
func (s *Server) basicUser(user, pass string) string {
	isAdmin := equal(user, AdminUser)
	adminPass := equal(pass, s.cfg.AdminPassword)
	isViewer := equal(user, ViewerUser)
	viewerPass := equal(pass, s.cfg.ViewerPassword)
	switch {
	case isAdmin && adminPass && s.cfg.AdminPassword != "":
		return AdminUser
	case isViewer && viewerPass && s.cfg.ViewerPassword != "":
		return ViewerUser
	}
	return ""
}

// equal compares in constant time; hashing first hides the lengths.
func equal(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// auth lets a request through only with valid credentials, with its user
// in the context (userOf); otherwise it answers 401 with a Basic
// challenge, so browsers ask for the password. The viewer may only read.
func (s *Server) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind, user := s.authenticate(r)
		if user == "" {
			s.unauthorized(w, r)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), userKey{}, user))
		if user == ViewerUser && !readOnlyMethod(r.Method) {
			s.refuseViewer(w, r)
			return
		}
		if kind == credBasic && !basicMayChange(r) {
			writeError(w, http.StatusForbidden, "a state-changing API request with browser (Basic) credentials must be same-origin and send application/json; scripts use Authorization: Bearer", "")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) unauthorized(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("WWW-Authenticate", `Basic realm="BMS insights", charset="UTF-8"`)
	msg := "authentication required: Authorization: Bearer <API_TOKEN> or HTTP Basic admin:<ADMIN_PASSWORD>"
	if s.cfg.ViewerPassword != "" {
		msg += " (or viewer:<VIEWER_PASSWORD>, read-only)"
	}
	if r.Header.Get("Authorization") != "" {
		msg = "invalid credentials"
	}
	if !jsonPath(r.URL.Path) && !strings.HasPrefix(r.URL.Path, "/assets/") {
		// A browser whose login was cancelled shows this body: a page.
		s.pageError(w, r, http.StatusUnauthorized, "Sign-in needed",
			"This page needs a login: user admin (ADMIN_PASSWORD) or viewer (VIEWER_PASSWORD, read-only). "+
				"Reload the page to be asked again.")
		return
	}
	writeError(w, http.StatusUnauthorized, msg, "")
}

// signOut is GET /signout (open): a page whose script makes the browser
// forget its cached Basic credentials (assets/signout.js), with a link to
// sign in again, as another user if need be.
func (s *Server) signOut(w http.ResponseWriter, r *http.Request) {
	s.renderPage(w, r, http.StatusOK, s.pages.signOut, &messagePage{Title: "Signed out"}, true)
}

// signedOutUser is the user signout.js makes the browser cache; it
// matches no credentials, so the next page asks for a login.
const signedOutUser = "signed-out"

// signIn is GET /signin (open): the browser's login prompt until it sends
// valid credentials, then the jobs. The sign-out page's probe (?probe=1)
// challenges until the browser sends the signed-out user, then answers
// 200, which makes the browser keep that user in place of the real login.
func (s *Server) signIn(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("probe") != "" {
		if u, _, ok := r.BasicAuth(); ok && u == signedOutUser {
			writeJSON(w, http.StatusOK, map[string]string{"status": "signed out"})
			return
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="BMS insights", charset="UTF-8"`)
		writeError(w, http.StatusUnauthorized, "sign-out probe", "")
		return
	}
	if _, user := s.authenticate(r); user != "" {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	s.unauthorized(w, r)
}

// favicon is GET /favicon.ico (open): the service's icon, which browsers
// ask for on every page.
func favicon(w http.ResponseWriter, _ *http.Request) {
	b, err := assetFS.ReadFile("assets/favicon.svg")
	if err != nil {
		http.NotFound(w, nil)
		return
	}
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Header().Set("Cache-Control", "public, max-age=86400")
	_, _ = w.Write(b)
}

// refuseViewer answers the viewer's attempt to change state: 403, as JSON
// on the API and asynqmon's routes, as a page elsewhere.
func (s *Server) refuseViewer(w http.ResponseWriter, r *http.Request) {
	msg := "the viewer is read-only: " + r.Method + " " + r.URL.Path + " is not allowed; log in as admin to act"
	if jsonPath(r.URL.Path) {
		writeError(w, http.StatusForbidden, msg, "")
		return
	}
	s.pageError(w, r, http.StatusForbidden, "Read-only", msg+".")
}

// jsonPath reports the routes that answer JSON (the API, its aliases,
// asynqmon and /metrics) rather than pages.
func jsonPath(p string) bool {
	return strings.HasPrefix(p, "/api/") || strings.HasPrefix(p, "/.netlify/") ||
		strings.HasPrefix(p, monitorRoot+"/") || p == "/metrics"
}

// sameOriginUnsafe refuses a state-changing request (anything but GET,
// HEAD, OPTIONS) that a browser sent from another site: browsers attach
// cached Basic credentials to cross-site form posts, so without this check
// another page could press the dashboard's buttons. Requests without
// Origin and Sec-Fetch-Site (curl, scripts) are not from a browser page and
// pass.
func (s *Server) sameOriginUnsafe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			next.ServeHTTP(w, r)
			return
		}
		if !sameOrigin(r) {
			writeError(w, http.StatusForbidden, "cross-site request refused", "")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// basicMayChange: a browser attaches cached Basic credentials to
// cross-site requests, and a cross-site form can POST text/plain without a
// preflight, so a state-changing API request authenticated by Basic must be
// same-origin and, when it has a body, JSON (which a form cannot send).
// The pages' own forms carry CSRF tokens and are checked by
// sameOriginUnsafe instead.
func basicMayChange(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	if !strings.HasPrefix(r.URL.Path, "/api/") && !strings.HasPrefix(r.URL.Path, "/.netlify/") {
		return true
	}
	if !sameOrigin(r) {
		return false
	}
	if r.ContentLength == 0 && r.Header.Get("Content-Type") == "" {
		return true // no body (DELETE)
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && mt == "application/json"
}

func sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "same-origin", "none":
		return true
	case "cross-site", "same-site":
		return false
	}
	origin := r.Header.Get("Origin")
	switch origin {
	case "":
		return true // browsers send Origin with every cross-origin POST
	case "null":
		return false
	}
	u, err := url.Parse(origin)
	return err == nil && strings.EqualFold(u.Host, r.Host)
}

// csrfToken is tied to the credentials the request carries, so a token
// seen by one user is useless with other credentials, and to this
// server's random key.
func (s *Server) csrfToken(r *http.Request, action string) string {
	m := hmac.New(sha256.New, s.csrfKey)
	m.Write([]byte(action))
	m.Write([]byte{0})
	m.Write([]byte(r.Header.Get("Authorization")))
	return hex.EncodeToString(m.Sum(nil))
}

func (s *Server) checkCSRF(r *http.Request, action string) bool {
	got := r.PostFormValue("csrf")
	want := s.csrfToken(r, action)
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// corsMiddleware adds CORS headers for the configured origins on the API
// routes and answers their preflights (which carry no credentials).
func (s *Server) corsMiddleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" || !corsPath(r.URL.Path) || !(s.corsAny || s.cors[origin]) {
			next.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Add("Vary", "Origin")
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Expose-Headers", "WWW-Authenticate")
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Add("Vary", "Access-Control-Request-Method")
			h.Add("Vary", "Access-Control-Request-Headers")
			h.Set("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
			h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
			h.Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func corsPath(p string) bool {
	return strings.HasPrefix(p, "/api/") || strings.HasPrefix(p, netlifyBase+"/")
}

// apiError is the JSON body of every error answer.
type apiError struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

func writeError(w http.ResponseWriter, code int, msg, field string) {
	writeJSON(w, code, apiError{Error: msg, Field: field})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		b = []byte(`{"error":"encode response: ` + strings.ReplaceAll(err.Error(), `"`, `'`) + `"}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

func itoa(n int) string { return strconv.Itoa(n) }
