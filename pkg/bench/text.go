package bench

import "math/rand/v2"

// CharsPerToken is how many characters of generated text make one token: the
// simulator's tokenizer counts four bytes a token, and real tokenizers come
// close to it on English-like text.
const CharsPerToken = 4

// Independent random streams derived from the seed, so that changing one
// setting (say the arrival process) leaves the others' draws unchanged.
const (
	streamText uint64 = iota + 0x6b76617369720000 // "kvasir" + stream number
	streamShuffle
	streamArrivals
	streamWarmup
	streamTenants // tenant i's seed: stream streamTenants+i
)

func newRand(seed int64, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), stream))
}

// textGen writes random lowercase words.
type textGen struct{ rng *rand.Rand }

// text returns random lowercase words of exactly tokens*CharsPerToken
// characters, not starting or ending with a space.
func (g textGen) text(tokens int) string {
	n := tokens * CharsPerToken
	if n <= 0 {
		return ""
	}
	b := make([]byte, n)
	for i := 0; i < n; {
		for w := 2 + g.rng.IntN(7); w > 0 && i < n; w-- { // words of 2..8 letters
			b[i] = 'a' + byte(g.rng.IntN(26))
			i++
		}
		if i < n {
			b[i] = ' '
			i++
		}
	}
	if b[n-1] == ' ' {
		b[n-1] = 'a' + byte(g.rng.IntN(26))
	}
	return string(b)
}

// uniform returns an integer uniform in [max(floor(n*ratio), 1), n].
func uniform(rng *rand.Rand, n int, ratio float64) int {
	lo := max(int(float64(n)*ratio), 1)
	if lo >= n {
		return n
	}
	return lo + rng.IntN(n-lo+1)
}
