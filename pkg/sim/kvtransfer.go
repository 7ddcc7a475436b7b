package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
)

// Disaggregated prefill/decode follows vLLM's NixlConnector protocol. The
// router sends the prefill engine the request with
// "kv_transfer_params": {"do_remote_decode": true} (and max_tokens 1, no
// streaming); the engine answers one token and, at the top level of the
// response, the parameters a decode engine needs to pull the KV:
//
//	{"do_remote_prefill": true, "do_remote_decode": false,
//	 "remote_engine_id": "...", "remote_block_ids": [...],
//	 "remote_host": "...", "remote_port": 8000, "tp_size": 1}
//
// The router passes them as the decode request's kv_transfer_params. The
// decode engine then receives the KV of the prompt tokens it does not cache
// instead of computing them.

const (
	kvParamsKey = "kv_transfer_params"
	codeBadKV   = "invalid_kv_transfer_params"
	codeKVRole  = "kv_transfer_role_mismatch"
)

// kvParamError is a malformed kv_transfer_params; field is the path of the
// offending field.
type kvParamError struct {
	field string
	msg   string
}

func (e *kvParamError) Error() string { return e.field + " " + e.msg }

// parseKVTransferParams reads a request's kv_transfer_params (raw JSON, not
// null): which half of a disaggregated request it is. Null fields count as
// absent (vLLM's proxies send the remote_* fields as null to the prefill
// engine); unknown fields are ignored. A remote decode needs the fields a
// prefill engine returns; the simulator checks them where vLLM would log a
// warning and prefill locally.
func parseKVTransferParams(raw []byte) (kvXfer, error) {
	p, err := openai.Parse(raw)
	if err != nil {
		return xferNone, &kvParamError{kvParamsKey, "must be an object"}
	}
	field := func(key string) ([]byte, bool) {
		v, ok := p.Get(key)
		if !ok || string(v) == "null" {
			return nil, false
		}
		return v, true
	}
	bad := func(key, msg string) error { return &kvParamError{kvParamsKey + "." + key, msg} }
	boolField := func(key string) (bool, error) {
		v, ok := field(key)
		if !ok {
			return false, nil
		}
		switch string(v) {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
		return false, bad(key, "must be a boolean")
	}
	sendKV, err := boolField("do_remote_decode")
	if err != nil {
		return xferNone, err
	}
	recvKV, err := boolField("do_remote_prefill")
	if err != nil {
		return xferNone, err
	}
	if sendKV && recvKV {
		return xferNone, bad("do_remote_prefill", "and do_remote_decode cannot both be true")
	}
	checks := []struct {
		key   string
		valid func([]byte) bool
		want  string
	}{
		{"remote_engine_id", isJSONString, "must be a string"},
		{"remote_block_ids", isBlockIDs, "must be an array of non-negative integers"},
		{"remote_host", isJSONString, "must be a string"},
		{"remote_port", func(v []byte) bool { n, err := strconv.Atoi(string(v)); return err == nil && n >= 0 && n <= 65535 }, "must be an integer in 0..65535"},
		{"tp_size", func(v []byte) bool { n, err := strconv.Atoi(string(v)); return err == nil && n >= 1 }, "must be a positive integer"},
	}
	for _, c := range checks {
		v, ok := field(c.key)
		switch {
		case ok && !c.valid(v):
			return xferNone, bad(c.key, c.want)
		case !ok && recvKV && c.key != "tp_size":
			return xferNone, bad(c.key, "is required with do_remote_prefill (pass on what the prefill engine returned)")
		}
	}
	switch {
	case sendKV:
		return xferSend, nil
	case recvKV:
		return xferRecv, nil
	}
	return xferNone, nil
}

func isJSONString(v []byte) bool { return len(v) >= 2 && v[0] == '"' }

func isBlockIDs(v []byte) bool {
	var ids []int64
	if json.Unmarshal(v, &ids) != nil {
		return false
	}
	for _, id := range ids {
		if id < 0 {
			return false
		}
	}
	return true
}

// kvTransfer reads the request's kv_transfer_params and checks that this
// engine's role serves them. It answers 400 when they are malformed or meant
// for the other role.
func (s *Server) kvTransfer(w http.ResponseWriter, obj openai.Object) (kvXfer, bool) {
	raw, present := obj.Get(kvParamsKey)
	if !present || string(raw) == "null" {
		return xferNone, true
	}
	xfer, err := parseKVTransferParams(raw)
	if err != nil {
		field := kvParamsKey
		if pe, ok := errors.AsType[*kvParamError](err); ok {
			field = pe.field
		}
		badParam(w, codeBadKV, field, err.Error())
		return xferNone, false
	}
	switch {
	case xfer == xferSend && s.cfg.Role == RoleDecode:
		badParam(w, codeKVRole, kvParamsKey+".do_remote_decode",
			"this engine runs with --role decode and does not prefill for another engine (kv_transfer_params.do_remote_decode); send it to a prefill or unified engine")
		return xferNone, false
	case xfer == xferRecv && s.cfg.Role == RolePrefill:
		badParam(w, codeKVRole, kvParamsKey+".do_remote_prefill",
			"this engine runs with --role prefill and does not decode from a remote prefill (kv_transfer_params.do_remote_prefill); send it to a decode or unified engine")
		return xferNone, false
	}
	return xfer, true
}

// badParam answers 400 naming the offending parameter.
func badParam(w http.ResponseWriter, code, param, msg string) {
	e := openai.Err(openai.TypeInvalidRequest, code, msg)
	e.Param = &param
	openai.WriteError(w, http.StatusBadRequest, e, 0)
}

// appendSentKV appends the kv_transfer_params of a prefill done for a
// decode engine: the blocks the prompt occupied here and where to pull them
// from.
func (s *Server) appendSentKV(b []byte, r *http.Request, blocks []int32) []byte {
	host, port := s.kvAddr(r)
	b = append(b, `{"do_remote_prefill":true,"do_remote_decode":false,"remote_engine_id":`...)
	b = append(b, jsonString(s.engineID)...)
	b = append(b, `,"remote_block_ids":[`...)
	for i, id := range blocks {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(id), 10)
	}
	b = append(b, `],"remote_host":`...)
	b = append(b, jsonString(host)...)
	b = append(b, `,"remote_port":`...)
	b = strconv.AppendInt(b, int64(port), 10)
	return append(b, `,"tp_size":1}`...)
}

// kvAddr is the address a decode engine would pull the KV from: the local
// address of the connection the request arrived on, else --host and --port.
// In the simulator nothing connects to it.
func (s *Server) kvAddr(r *http.Request) (string, int) {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok && a != nil {
		return a.IP.String(), a.Port
	}
	return s.cfg.Host, s.cfg.Port
}

// handlePrefixMatch serves POST /sim/prefix-match?api=chat|completions: how
// much of the body's prompt the KV cache holds right now, read through the
// scheduler without changing the cache. The body is that of a chat or
// completions request; its model selects the LoRA salt as in generation.
func (s *Server) handlePrefixMatch(w http.ResponseWriter, r *http.Request) {
	var chat bool
	switch api := r.URL.Query().Get("api"); api {
	case "chat":
		chat = true
	case "completions":
	default:
		badParam(w, "invalid_api", "api", fmt.Sprintf(`query parameter "api" must be "chat" or "completions", got %q`, api))
		return
	}
	body, obj, _, lora, ok := s.accept(w, r)
	if !ok {
		return
	}
	defer s.putBuf(body)
	textBuf := s.getBuf()
	defer s.putBuf(textBuf)
	text, ok := renderPrompt(w, obj, chat, textBuf)
	if !ok {
		return
	}
	toks := s.tok.tokenize(text)
	hashes := s.tok.blockHashes(toks, s.cfg.BlockSize)
	promptLen := toks.n
	s.tok.release(toks)
	prompt.SaltHashes(hashes, lora)
	hits, err := s.sched.prefixMatch(r.Context(), hashes)
	if err != nil {
		if errors.Is(err, errStopped) {
			openai.WriteError(w, http.StatusServiceUnavailable, openai.Err(openai.TypeUnavailable, "engine_stopped", err.Error()), time.Second)
		}
		return // otherwise the client has gone
	}
	b := append((*body)[:0], `{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(promptLen), 10)
	b = append(b, `,"cached_tokens":`...)
	b = strconv.AppendInt(b, int64(hits*s.cfg.BlockSize), 10)
	b = append(b, `,"block_size":`...)
	b = strconv.AppendInt(b, int64(s.cfg.BlockSize), 10)
	b = append(b, '}')
	*body = b
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}
