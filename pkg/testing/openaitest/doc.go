// Package openaitest builds OpenAI API requests and reads OpenAI answers in
// tests: request bodies for Kvasir's handlers (ChatBody) and streamed
// completions read through the official SDK (Accumulate).
package openaitest
