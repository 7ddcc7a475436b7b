package main

import "github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"

func main() {
	benchkit.Main("groups", "groups recovery|placement|fragmentation [flags]", map[string]benchkit.Benchmark{
		"recovery": recovery, "placement": placement, "fragmentation": fragmentation,
	}, " (want recovery, placement or fragmentation)")
}
