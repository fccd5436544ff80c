package main

import (
	"context"
	"io"

	"github.com/bmsview/insights/internal/app"
)

func demo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return usagef("demo: not yet")
}

func runDemo(ctx context.Context, a *app.App, w io.Writer) error { return nil }
