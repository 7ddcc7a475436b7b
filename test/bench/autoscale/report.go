package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/bench"
	"github.com/kvasir-serving/kvasir/test/bench/internal/localrun"
)

// goal is one pass/fail check of a benchmark.
type goal struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// report collects a benchmark's settings, results and goals, prints them
// as Markdown tables and writes them as JSON.
type report struct {
	Benchmark string         `json:"benchmark"`
	File      string         `json:"file"`
	Started   time.Time      `json:"started"`
	Settings  map[string]any `json:"settings"`
	Results   map[string]any `json:"results"`
	Tables    []*table       `json:"tables,omitempty"`
	Goals     []goal         `json:"goals"`
	Notes     []string       `json:"notes,omitempty"`
	// LogProblems are the WARN and ERROR lines of kvasir local's log.
	LogProblems      []string            `json:"log_problems,omitempty"`
	LogProblemsTotal int                 `json:"log_problems_total"`
	ScaleEvents      []change            `json:"scale_events,omitempty"`
	Timeline         []sample            `json:"timeline,omitempty"`
	CPU              []cpuSample         `json:"cpu,omitempty"`
	Changes          map[string][]change `json:"changes,omitempty"`

	rows [][2]string
	p    *localrun.Platform
}

// table is an extra table of the printed report (per phase, per model).
type table struct {
	Title  string     `json:"title"`
	Header []string   `json:"header"`
	Rows   [][]string `json:"rows"`
}

func newReport(c *common) *report {
	return &report{Benchmark: c.name, File: c.file, Started: time.Now(), Settings: map[string]any{}, Results: map[string]any{}}
}

// add records a result under key and a row of the printed table.
func (r *report) add(key, label string, v any, format string) {
	r.Results[key] = v
	r.rows = append(r.rows, [2]string{label, fmt.Sprintf(format, v)})
}

// row adds a printed row only.
func (r *report) row(label, value string) { r.rows = append(r.rows, [2]string{label, value}) }

func (r *report) check(name string, ok bool, format string, args ...any) {
	r.Goals = append(r.Goals, goal{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

func (r *report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// finish prints the report, writes the JSON and returns an error naming
// the goals missed (or runErr, a failure of the run itself).
func (r *report) finish(c *common, title string, runErr error) error {
	fmt.Printf("\n%s\n\n", title)
	if len(r.rows) > 0 {
		fmt.Println("| measure | value |")
		fmt.Println("| --- | ---: |")
		for _, row := range r.rows {
			fmt.Printf("| %s | %s |\n", row[0], row[1])
		}
	}
	for _, t := range r.Tables {
		fmt.Printf("\n%s\n\n", t.Title)
		fmt.Println("| " + strings.Join(t.Header, " | ") + " |")
		sep := make([]string, len(t.Header))
		for i := range sep {
			sep[i] = "---"
			if i > 0 {
				sep[i] = "---:"
			}
		}
		fmt.Println("| " + strings.Join(sep, " | ") + " |")
		for _, row := range t.Rows {
			fmt.Println("| " + strings.Join(row, " | ") + " |")
		}
	}
	if len(r.Goals) > 0 {
		fmt.Println("\n| goal | result | detail |")
		fmt.Println("| --- | --- | --- |")
		for _, g := range r.Goals {
			res := "ok"
			if !g.OK {
				res = "**MISSED**"
			}
			fmt.Printf("| %s | %s | %s |\n", g.Name, res, g.Detail)
		}
	}
	for _, n := range r.Notes {
		fmt.Printf("\nNote: %s\n", n)
	}
	if r.LogProblemsTotal > 0 {
		fmt.Printf("\nkvasir local logged %d warnings/errors; distinct ones (time stripped):\n", r.LogProblemsTotal)
		for _, l := range r.LogProblems {
			fmt.Printf("    %s\n", l)
		}
	}
	if c.jsonOut != "" {
		data, err := json.MarshalIndent(r, "", " ")
		if err == nil {
			err = os.WriteFile(c.jsonOut, append(data, '\n'), 0o644)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "writing %s: %v\n", c.jsonOut, err)
		} else {
			fmt.Fprintf(os.Stderr, "wrote %s\n", c.jsonOut)
		}
	}
	var errs []string
	if runErr != nil {
		errs = append(errs, runErr.Error())
	}
	if r.p != nil {
		if err := r.p.Alive(); err != nil {
			errs = append(errs, err.Error())
		}
	}
	for _, g := range r.Goals {
		if !g.OK {
			errs = append(errs, fmt.Sprintf("goal missed: %s: %s", g.Name, g.Detail))
		}
	}
	if len(errs) > 0 {
		return errors.New(r.Benchmark + " FAILED:\n  " + strings.Join(errs, "\n  "))
	}
	fmt.Fprintf(os.Stderr, "%s: all goals met\n", r.Benchmark)
	return nil
}

// attach puts the timeline and the platform's log problems into the report.
func (r *report) attach(tl *timeline, p *localrun.Platform) {
	if tl != nil {
		r.Timeline, r.CPU = tl.samples, tl.cpu
	}
	r.p = p
	if p != nil {
		r.LogProblems, r.LogProblemsTotal = logProblems(p.LogFile, 8)
	}
}

// secs formats seconds, or "never" for a negative value.
func secs(v float64) string {
	if v < 0 {
		return "never"
	}
	return fmt.Sprintf("%.2f s", v)
}

// examples formats a run's error examples ("" without errors).
func examples(ex []bench.ErrorExample) string {
	var parts []string
	for _, e := range ex {
		parts = append(parts, fmt.Sprintf("%dx %q", e.Count, e.Message))
	}
	if len(parts) == 0 {
		return ""
	}
	return "; e.g. " + strings.Join(parts, ", ")
}

func msec(v float64) string { return fmt.Sprintf("%.0f ms", v*1e3) }

func errText(err error) string {
	if err == nil {
		return ""
	}
	return "; " + err.Error()
}

func prefixed(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}
