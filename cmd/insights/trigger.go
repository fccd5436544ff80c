package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/bmsview/insights/internal/config"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return usagef("%v", err)
	}
	return nil
}

func trigger(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("trigger", stderr)
	systemID := fs.String("system-id", "", "system id (required unless --job-id names a job with a stored request)")
	dataPath := fs.String("data", "", "analysisData JSON file, or - for stdin")
	jobID := fs.String("job-id", "", "job id (default: generated)")
	priority := fs.Int("priority", tasks.DefaultPriority, "priority 0–10")
	urgent := fs.Bool("urgent", false, "priority 10")
	at := fs.String("at", "", "run at this RFC 3339 time")
	in := fs.Duration("in", 0, "run after this duration")
	prompt := fs.String("prompt", "", "custom prompt (≤ 5000 chars)")
	contextDays := fs.Int("context-days", tasks.DefaultContextWindow, "context window in days (1–365)")
	maxIter := fs.Int("max-iterations", tasks.DefaultMaxIterations, "LLM tool-call turns (1–50)")
	fullContext := fs.Bool("full-context", false, "analyse every raw record of the window")
	server := fs.String("server", "", "send through a running server's API (token from API_TOKEN)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("trigger: unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	data := tasks.EventData{JobID: *jobID, SystemID: *systemID, CustomPrompt: *prompt}
	if set["context-days"] {
		data.ContextWindowDays = contextDays
	}
	if set["max-iterations"] {
		data.MaxIterations = maxIter
	}
	if set["full-context"] {
		data.FullContextMode = fullContext
	}
	if *dataPath != "" {
		snap, err := readSnapshot(*dataPath, stdin)
		if err != nil {
			return err
		}
		data.AnalysisData = snap
	}
	if *urgent {
		if set["priority"] && *priority != tasks.UrgentPriority {
			return usagef("--urgent and --priority %d disagree", *priority)
		}
		*priority = tasks.UrgentPriority
	}
	if *priority < tasks.MinPriority || *priority > tasks.MaxPriority {
		return usagef("--priority: must be %d–%d, got %d", tasks.MinPriority, tasks.MaxPriority, *priority)
	}
	var when time.Time
	switch {
	case *at != "" && set["in"]:
		return usagef("--at and --in: give one of them")
	case *at != "":
		t, err := time.Parse(time.RFC3339, *at)
		if err != nil {
			return usagef("--at: want RFC 3339 such as 2030-01-02T15:04:05Z, got %q", *at)
		}
		when = t
	case set["in"]:
		if *in < 0 {
			return usagef("--in: must not be negative")
		}
		when = time.Now().Add(*in)
	}
	if err := data.Validate(""); err != nil {
		return usagef("%s", flagName(err))
	}
	var res *tasks.SendResult
	var err error
	if *server != "" {
		res, err = sendHTTP(ctx, *server, data, *priority, when)
	} else {
		res, err = sendDirect(ctx, data, *priority, when)
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(res)
}

// flagName rewrites a refusal of an event field as the flag that set it.
func flagName(err error) string {
	r := strings.NewReplacer("jobId", "--job-id", "systemId", "--system-id", "analysisData", "--data",
		"customPrompt", "--prompt", "contextWindowDays", "--context-days", "maxIterations", "--max-iterations")
	return r.Replace(err.Error())
}

func readSnapshot(path string, stdin io.Reader) (*tasks.AnalysisData, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(stdin, tasks.MaxPayloadBytes+1))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, usagef("--data: %v", err)
	}
	var snap tasks.AnalysisData
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&snap); err != nil {
		return nil, usagef("--data: not analysisData JSON: %v", err)
	}
	return &snap, nil
}

// sendDirect sends like any Go producer: straight to Redis, recording the
// job in MongoDB where MONGODB_URI is set.
func sendDirect(ctx context.Context, data tasks.EventData, priority int, when time.Time) (*tasks.SendResult, error) {
	cfg, err := config.Load(nil)
	if err != nil {
		return nil, err
	}
	if cfg.EmbeddedRedis() {
		return nil, usagef("REDIS_URL is not set: the embedded Redis lives inside `insights serve`; send through it with --server URL, or set REDIS_URL")
	}
	opt, err := cfg.RedisConnOpt()
	if err != nil {
		return nil, err
	}
	cc := tasks.ClientConfig{Timeout: cfg.TaskTimeout, Retention: cfg.TaskRetention}
	if !cfg.EmbeddedMongo() {
		st, err := store.Open(ctx, store.Config{URI: cfg.MongoURI, Database: cfg.MongoDB})
		if err != nil {
			return nil, fmt.Errorf("MONGODB_URI: %w", err)
		}
		defer st.Close(context.Background())
		cc.Jobs = st
	}
	c := tasks.NewClient(opt, cc)
	defer c.Close()
	return c.Send(ctx, &tasks.Send{Data: data, Priority: priority, At: when})
}

func sendHTTP(ctx context.Context, server string, data tasks.EventData, priority int, when time.Time) (*tasks.SendResult, error) {
	env := map[string]any{"eventName": tasks.EventGenerateInsights, "eventData": data, "priority": priority}
	if !when.IsZero() {
		env["delayUntil"] = when.UTC().Format(time.RFC3339Nano)
	}
	body, _ := json.Marshal(env)
	var res tasks.SendResult
	if err := callAPI(ctx, http.MethodPost, server, "/api/events", body, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// callAPI calls the server with API_TOKEN (or ADMIN_PASSWORD) and decodes
// the JSON answer into out; an error status becomes an error with the
// server's message.
func callAPI(ctx context.Context, method, server, path string, body []byte, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(server, "/")+path, bytes.NewReader(body))
	if err != nil {
		return usagef("--server: %v", err)
	}
	req.Header.Set("Content-Type", "application/json")
	switch {
	case os.Getenv("API_TOKEN") != "":
		// API_TOKEN may list several tokens (a rotation): any one will do.
		tok, _, _ := strings.Cut(os.Getenv("API_TOKEN"), ",")
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(tok))
	case os.Getenv("ADMIN_PASSWORD") != "":
		req.SetBasicAuth("admin", os.Getenv("ADMIN_PASSWORD"))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
			Field string `json:"field"`
		}
		_ = json.Unmarshal(b, &e)
		msg := fmt.Sprintf("server answered %s: %s", resp.Status, strings.TrimSpace(e.Error))
		if e.Field != "" {
			msg += " (field " + e.Field + ")"
		}
		if resp.StatusCode == http.StatusUnprocessableEntity || resp.StatusCode == http.StatusBadRequest {
			return usagef("%s", msg)
		}
		if resp.StatusCode == http.StatusUnauthorized {
			msg += " — set API_TOKEN to the server's token"
		}
		return errors.New(msg)
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = b
		return nil
	}
	return json.Unmarshal(b, out)
}
