package tokenizer

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/text/unicode/norm"
)

// The textbook NFC equals x/text's wherever x/text inserts no U+034F.
func TestNFCSlowEqualsNorm(t *testing.T) {
	alphabet := []rune("aeiouAEOUnNcCsSzZ \u0300\u0301\u0302\u0303\u0308\u0323\u0327\u031b\u0345\u05b0\u0e38\u3099\u1100\u1161\u11a8\uac00\u0f71\u0f72\u0f80\u1e9b\u212b\u2126\u00c5\u01d5\u0344\u0958")
	r := rand.New(rand.NewPCG(9, 10))
	for range 20000 {
		var b strings.Builder
		for range r.IntN(12) {
			b.WriteRune(alphabet[r.IntN(len(alphabet))])
		}
		s := b.String()
		if got, want := string(nfcSlow([]byte(s))), norm.NFC.String(s); got != want {
			t.Fatalf("%+q: slow %+q, x/text %+q", s, got, want)
		}
	}
}

// Long runs of combining marks are ordered and composed as a whole, with no
// U+034F inserted.
func TestNFCLongRuns(t *testing.T) {
	marks := strings.Repeat("\u0301", 40)
	if got, want := string(nfc([]byte("e"+marks))), "\u00e9"+marks[2:]; got != want {
		t.Errorf("got %+q, want %+q", got, want)
	}
	// Marks are ordered across the whole run (cedilla 202, dot below 220,
	// acute 230); the cedilla and then the acute compose with c (the dots
	// between have a lower class, so do not block the acute). CPython's
	// unicodedata agrees.
	in := "c" + strings.Repeat("\u0301\u0323", 20) + "\u0327"
	want := "\u1e09" + strings.Repeat("\u0323", 20) + strings.Repeat("\u0301", 19)
	if got := string(nfc([]byte(in))); got != want {
		t.Errorf("got %+q, want %+q", got, want)
	}
}

const pythonNFC = `
import json, sys, unicodedata
json.dump([unicodedata.normalize("NFC", s) for s in json.load(sys.stdin)], sys.stdout)
`

// CPython's unicodedata has no Stream-Safe limit: long runs of marks must
// normalize as it does. Skipped without python3.
func TestNFCMatchesPython(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not available")
	}
	alphabet := []rune("aecoA \u0300\u0301\u0302\u0308\u0323\u0327\u031b\u0345\u05b0\u3099\u1100\u1161\u11a8")
	r := rand.New(rand.NewPCG(11, 12))
	var in []string
	marks := []rune("\u0300\u0301\u0302\u0308\u0323\u0327\u031b\u0345\u05b0\u3099")
	for i := range 300 {
		var b strings.Builder
		if i%2 == 0 { // a starter, then a run of more than 30 marks
			b.WriteRune(alphabet[r.IntN(5)])
			for range 31 + r.IntN(30) {
				b.WriteRune(marks[r.IntN(len(marks))])
			}
		}
		for range 20 + r.IntN(60) {
			b.WriteRune(alphabet[r.IntN(len(alphabet))])
		}
		in = append(in, b.String())
	}
	req, _ := json.Marshal(in)
	cmd := exec.Command("python3", "-c", pythonNFC)
	cmd.Stdin = bytes.NewReader(req)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3: %v", err)
	}
	var want []string
	if err := json.Unmarshal(out, &want); err != nil {
		t.Fatal(err)
	}
	for i, s := range in {
		if got := string(nfc([]byte(s))); got != want[i] {
			t.Errorf("%+q: got %+q, python %+q", s, got, want[i])
		}
	}
}
