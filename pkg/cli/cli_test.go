package cli

import (
	"flag"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/activator"
)

func TestActivatorFlags(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg := activator.DefaultConfig()
	RegisterActivatorFlags(fs, &cfg)
	require.NoError(t, fs.Parse([]string{
		"--allowed-origins", "https://app.example.com, http://localhost:3000",
		"--outlier-consecutive-failures", "3",
		"--outlier-base-ejection", "10s",
		"--outlier-max-ejection", "1m",
		"--outlier-max-ejection-percent", "50",
	}))
	require.Equal(t, []string{"https://app.example.com", "http://localhost:3000"}, cfg.AllowedOrigins)
	require.Equal(t, 3, cfg.OutlierConsecutiveFailures)
	require.Equal(t, 10*time.Second, cfg.OutlierBaseEjection)
	require.Equal(t, time.Minute, cfg.OutlierMaxEjection)
	require.Equal(t, 50, cfg.OutlierMaxEjectionPercent)
	require.NoError(t, cfg.Validate())

	cfg = activator.DefaultConfig()
	fs = flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	RegisterActivatorFlags(fs, &cfg)
	require.NoError(t, fs.Parse([]string{"--allowed-origins", "app.example.com/path"}))
	require.ErrorContains(t, cfg.Validate(), "allowed-origins", "a bad origin is refused, naming the flag")
	require.Empty(t, activator.DefaultConfig().AllowedOrigins, "same origin only by default")
}
