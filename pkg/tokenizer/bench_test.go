package tokenizer

import (
	"os"
	"strings"
	"testing"
)

var readFile = os.ReadFile

// benchText returns n bytes of the corpus's English (repeated if need be).
func benchText(n int) []byte {
	all := strings.Join(Corpus(), "\n\n")
	for len(all) < n {
		all += "\n\n" + all
	}
	return []byte(all[:n])
}

func BenchmarkAppendEncode(b *testing.B) {
	tk := testdataTokenizer(b)
	cold, err := Load("testdata/tokenizer.json")
	if err != nil {
		b.Fatal(err)
	}
	cold.model.cache = nil
	for _, c := range []struct {
		name string
		tk   *Tokenizer
		size int
	}{
		{"1KiB", tk, 1 << 10},
		{"16KiB", tk, 16 << 10},
		{"16KiB-nocache", cold, 16 << 10},
	} {
		text := benchText(c.size)
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			b.ReportAllocs()
			var dst []uint32
			for b.Loop() {
				dst = c.tk.AppendEncode(dst[:0], text)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(text))*100, "ns/100B")
			b.ReportMetric(float64(len(dst)), "tokens")
		})
	}
	text := benchText(16 << 10)
	b.Run("16KiB-parallel", func(b *testing.B) {
		b.SetBytes(int64(len(text)))
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var dst []uint32
			for pb.Next() {
				dst = tk.AppendEncode(dst[:0], text)
			}
		})
	})
}

func BenchmarkLoad(b *testing.B) {
	data, err := os.ReadFile("testdata/tokenizer.json")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := LoadBytes(data); err != nil {
			b.Fatal(err)
		}
	}
}
