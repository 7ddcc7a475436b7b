package tokenizer_test

import (
	"fmt"

	"github.com/kvasir-serving/kvasir/pkg/tokenizer"
)

func ExampleTokenizer_AppendEncode() {
	json, err := tokenizer.Train(tokenizer.Corpus(), 1000)
	if err != nil {
		panic(err)
	}
	tk, err := tokenizer.LoadBytes(json)
	if err != nil {
		panic(err)
	}
	ids := tk.AppendEncode(nil, []byte("<|begin_of_text|>The committee met on Monday."))
	fmt.Println(ids, tk.VocabSize())
	fmt.Printf("%q\n", tk.Decode(ids[1:]))
	// Output:
	// [1000 313 813 876 295 770 13] 1005
	// "The committee met on Monday."
}
