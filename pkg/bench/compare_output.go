package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

// strategyJSON is one entry of the report's "results": the strategy's name
// and plugins (its args and tenants when set), the Result's fields flattened
// next to them (absent when the workload never ran), and the error of a
// failed strategy.
type strategyJSON struct {
	Strategy string                   `json:"strategy"`
	Plugins  []v1alpha1.RoutingPlugin `json:"plugins"`
	// Args and StrategyTenants are the strategy's args and tenants, when
	// it has them.
	Args            []string `json:"args,omitempty"`
	StrategyTenants []string `json:"strategy_tenants,omitempty"`
	*Result
	Error string `json:"error,omitempty"`
}

// MarshalJSON writes the strategy's entry of the report.
func (r StrategyResult) MarshalJSON() ([]byte, error) {
	e := strategyJSON{Strategy: r.Strategy.Name, Plugins: r.Strategy.Plugins, Args: r.Strategy.Args,
		StrategyTenants: r.Strategy.Tenants, Result: r.Result}
	if e.Plugins == nil {
		e.Plugins = []v1alpha1.RoutingPlugin{}
	}
	if r.Err != nil {
		e.Error = r.Err.Error()
	}
	return json.Marshal(e)
}

// WriteJSON writes the report as one indented object:
// {"benchmark": NAME, "results": [{"strategy": NAME, ...}]}.
func (r *Report) WriteJSON(w io.Writer) error {
	results := r.Results
	if results == nil {
		results = []StrategyResult{}
	}
	b, err := json.MarshalIndent(struct {
		Benchmark string           `json:"benchmark"`
		Results   []StrategyResult `json:"results"`
	}{r.Benchmark, results}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	b = append(b, '\n')
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// WriteTable writes the strategies side by side, one row each, with the
// ratios of throughput and mean TTFT to the first strategy's, then the
// errors of the strategies that failed.
func (r *Report) WriteTable(w io.Writer) {
	header := []string{"strategy", "completed", "errors", "throughput_rps", "output_tokens_per_s",
		"ttft_mean_s", "ttft_p99_s", "e2e_mean_s", "cache_hit_ratio", "throughput_x", "ttft_mean_x"}
	rows := [][]string{header}
	// The baseline is the first strategy, if it completed requests.
	var base *Result
	if len(r.Results) > 0 && r.Results[0].Result != nil && r.Results[0].Result.Completed > 0 {
		base = r.Results[0].Result
	}
	for _, s := range r.Results {
		name := s.Strategy.Name
		if s.Failed() {
			name += " (failed)"
		}
		res := s.Result
		if res == nil {
			row := []string{name}
			for range header[1:] {
				row = append(row, "-")
			}
			rows = append(rows, row)
			continue
		}
		thrRatio, ttftRatio := "-", "-"
		if base != nil && res.Completed > 0 {
			if base.ThroughputRPS > 0 {
				thrRatio = fmt.Sprintf("%.2fx", res.ThroughputRPS/base.ThroughputRPS)
			}
			if res.TTFTMeasured && base.TTFTMeasured && base.TTFTMeanS > 0 {
				ttftRatio = fmt.Sprintf("%.2fx", res.TTFTMeanS/base.TTFTMeanS)
			}
		}
		rows = append(rows, []string{
			name,
			fmt.Sprint(res.Completed),
			fmt.Sprint(res.Errors),
			fmt.Sprintf("%.2f", res.ThroughputRPS),
			fmt.Sprintf("%.1f", res.OutputTokensPerS),
			fmt.Sprintf("%.4f", res.TTFTMeanS),
			fmt.Sprintf("%.4f", res.TTFTP99S),
			fmt.Sprintf("%.4f", res.E2EMeanS),
			fmt.Sprintf("%.4f", res.CacheHitRatio),
			thrRatio,
			ttftRatio,
		})
	}
	writeColumns(w, rows)
	if base != nil {
		fmt.Fprintf(w, "throughput_x and ttft_mean_x: ratio to %s's.\n", r.Results[0].Strategy.Name)
	}
	for _, s := range r.Results {
		if s.Failed() {
			fmt.Fprintf(w, "%s failed: %v\n", s.Strategy.Name, s.Err)
		}
	}
	r.writeTenants(w)
}

// writeTenants writes, when the workload has tenants, one row per strategy
// and tenant.
func (r *Report) writeTenants(w io.Writer) {
	header := []string{"strategy", "tenant", "completed", "errors", "401", "403", "429", "503", "throughput_rps",
		"output_tokens_per_s", "tokens_served", "tokens_served_share", "backlogged_share", "all_backlogged_s",
		"ttft_p50_s", "ttft_p99_s", "e2e_p50_s"}
	rows := [][]string{header}
	for _, s := range r.Results {
		if s.Result == nil {
			continue
		}
		for i := range s.Result.Tenants {
			t := &s.Result.Tenants[i]
			rows = append(rows, []string{s.Strategy.Name, t.Name, fmt.Sprint(t.Completed), fmt.Sprint(t.Errors),
				fmt.Sprint(t.ErrorCount(401)), fmt.Sprint(t.ErrorCount(403)), fmt.Sprint(t.ErrorCount(429)), fmt.Sprint(t.ErrorCount(503)),
				fmt.Sprintf("%.2f", t.ThroughputRPS), fmt.Sprintf("%.1f", t.OutputTokensPerS), fmt.Sprint(t.TokensServed),
				fmt.Sprintf("%.3f", t.TokensServedShare), optional("%.3f", t.BackloggedShare), optional("%.1f", s.Result.AllBackloggedS),
				fmt.Sprintf("%.4f", t.TTFTP50S), fmt.Sprintf("%.4f", t.TTFTP99S), fmt.Sprintf("%.4f", t.E2EP50S)})
		}
	}
	if len(rows) > 1 {
		fmt.Fprintln(w)
		writeColumns(w, rows)
		fmt.Fprintln(w, "backlogged_share: share of the tokens served while every tenant was backlogged (all_backlogged_s seconds in all).")
	}
}

// optional formats *v, or "-" when v is nil.
func optional(format string, v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf(format, *v)
}

// writeColumns writes rows as aligned columns: the first left-aligned, the
// others right-aligned, two spaces apart.
func writeColumns(w io.Writer, rows [][]string) {
	var widths []int
	for _, row := range rows {
		for i, cell := range row {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], len(cell))
		}
	}
	for _, row := range rows {
		var sb strings.Builder
		for i, cell := range row {
			if i == 0 {
				fmt.Fprintf(&sb, "%-*s", widths[i], cell)
				continue
			}
			fmt.Fprintf(&sb, "  %*s", widths[i], cell)
		}
		fmt.Fprintln(w, sb.String())
	}
}
