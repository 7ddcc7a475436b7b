package cli

import (
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
)

// --coscheduling-scheduler-name: scheduler-plugins' name by default, any
// DNS subdomain, empty to turn coscheduling off; anything else is a usage
// error that does not echo a huge value.
func TestCoschedulingSchedulerNameFlag(t *testing.T) {
	parse := func(extra ...string) (*controllerFlags, error) {
		return parseControllerFlags(append([]string{"--queue-proxy-image", "qp", "--simulator-image", "sim"}, extra...), io.Discard)
	}
	f, err := parse()
	require.NoError(t, err)
	require.Equal(t, resources.DefaultCoschedulingSchedulerName, f.res.CoschedulingSchedulerName)
	require.Equal(t, "scheduler-plugins-scheduler", f.res.CoschedulingSchedulerName)
	for name, tc := range map[string]struct {
		value, want string
	}{
		"another name":   {value: "gang.example.com", want: "gang.example.com"},
		"off":            {value: "", want: ""},
		"upper case":     {value: "Gang", want: "--coscheduling-scheduler-name \"Gang\": "},
		"space":          {value: "my scheduler", want: "--coscheduling-scheduler-name \"my scheduler\": "},
		"slash":          {value: "a/b", want: "--coscheduling-scheduler-name \"a/b\": "},
		"leading dash":   {value: "-gang", want: "--coscheduling-scheduler-name \"-gang\": "},
		"over 253 bytes": {value: strings.Repeat("a", 254), want: "must be no more than 253 characters"},
		"huge":           {value: strings.Repeat("x", 1<<20), want: "must be no more than 253 characters"},
		"newline":        {value: "gang\nEVIL", want: `"gang\nEVIL"`},
	} {
		t.Run(name, func(t *testing.T) {
			f, err := parse("--coscheduling-scheduler-name=" + tc.value)
			if tc.want == tc.value {
				require.NoError(t, err)
				require.Equal(t, tc.value, f.res.CoschedulingSchedulerName)
				return
			}
			require.ErrorAs(t, err, new(UsageError))
			require.ErrorContains(t, err, tc.want)
			require.Less(t, len(err.Error()), 1024, "a huge value is not echoed")
		})
	}
}
