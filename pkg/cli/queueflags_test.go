package cli

import (
	"flag"
	"io"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/activator"
)

func TestQueueFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		waiting int
		kv      float64
		wantErr string // from Validate, naming the flag
	}{
		{name: "off by default"},
		{name: "both", args: []string{"--saturation-waiting", "4", "--saturation-kv-usage", "0.9"}, waiting: 4, kv: 0.9},
		{name: "negative waiting", args: []string{"--saturation-waiting", "-1"}, waiting: -1, wantErr: "saturation-waiting"},
		{name: "KV usage above 1", args: []string{"--saturation-kv-usage", "1.5"}, kv: 1.5, wantErr: "saturation-kv-usage"},
		{name: "KV usage NaN", args: []string{"--saturation-kv-usage", "NaN"}, kv: math.NaN(), wantErr: "saturation-kv-usage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			cfg := activator.DefaultConfig()
			RegisterActivatorFlags(fs, &cfg) // registers the queue flags too
			require.NoError(t, fs.Parse(tc.args))
			require.Equal(t, tc.waiting, cfg.SaturationWaiting)
			if !math.IsNaN(tc.kv) { // NaN is checked by Validate alone
				require.Equal(t, tc.kv, cfg.SaturationKVUsage)
			}
			if tc.wantErr == "" {
				require.NoError(t, cfg.Validate())
				return
			}
			require.ErrorContains(t, cfg.Validate(), tc.wantErr)
		})
	}
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg := activator.DefaultConfig()
	RegisterActivatorFlags(fs, &cfg)
	require.Error(t, fs.Parse([]string{"--saturation-waiting", "many"}), "not a number")
}

func TestFairQueueingFlag(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		fcfs    bool
		wantErr bool
	}{
		{args: nil},
		{args: []string{"--fair-queueing"}},
		{args: []string{"--fair-queueing=true"}},
		{args: []string{"--fair-queueing=false"}, fcfs: true},
		{args: []string{"--fair-queueing=0"}, fcfs: true},
		{args: []string{"--fair-queueing=maybe"}, wantErr: true},
	} {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cfg := activator.DefaultConfig()
		RegisterActivatorFlags(fs, &cfg)
		err := fs.Parse(tc.args)
		if tc.wantErr {
			require.Error(t, err, "%v", tc.args)
			continue
		}
		require.NoError(t, err, "%v", tc.args)
		require.Equal(t, tc.fcfs, cfg.FirstComeFirstServed, "%v", tc.args)
	}
}
