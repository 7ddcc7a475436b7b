// Package cli owns the `kvasir` command line: subcommand dispatch, flags and
// their validation. The work itself lives in the packages it calls.
package cli
