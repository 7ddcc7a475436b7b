package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// startFloorForTest serves the floor proxy in front of upstream on a free
// port and returns its base URL (raw: with --raw-syscalls).
func startFloorForTest(t *testing.T, upstream string, raw bool) string {
	t.Helper()
	var ln net.Listener
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if raw {
		ln = rawListener{ln}
	}
	srv := newFloorServer(upstream, raw)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Shutdown()
		<-done
	})
	return "http://" + ln.Addr().String()
}

func TestFloorProxyForwards(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Seen-Connection", r.Header.Get("Connection"))
		w.WriteHeader(http.StatusTeapot)
		_, _ = w.Write([]byte(r.Method + " " + r.URL.RequestURI() + " " + string(body)))
	}))
	defer backend.Close()
	for _, raw := range []bool{false, true} {
		t.Run(fmt.Sprintf("raw syscalls %v", raw), func(t *testing.T) {
			testFloorProxyForwards(t, startFloorForTest(t, strings.TrimPrefix(backend.URL, "http://"), raw))
		})
	}
}

func testFloorProxyForwards(t *testing.T, floor string) {
	tests := []struct {
		name, method, path, body string
		header                   map[string]string
	}{
		{name: "post chat", method: http.MethodPost, path: "/v1/chat/completions", body: `{"model":"m"}`},
		{name: "get with query", method: http.MethodGet, path: "/v1/models?x=1&y=%2F"},
		{name: "unnormalised path kept", method: http.MethodGet, path: "/a//b/../c"},
		{name: "client's Connection: close not forwarded", method: http.MethodPost, path: "/x", body: "b",
			header: map[string]string{"Connection": "close"}},
		{name: "1 MiB body", method: http.MethodPost, path: "/big", body: strings.Repeat("a", 1<<20)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(context.Background(), tt.method, floor+tt.path, bytes.NewReader([]byte(tt.body)))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusTeapot {
				t.Errorf("status %d, want %d", resp.StatusCode, http.StatusTeapot)
			}
			if want := tt.method + " " + tt.path + " " + tt.body; string(got) != want {
				t.Errorf("body %.80q, want %.80q", got, want)
			}
			if c := resp.Header.Get("X-Seen-Connection"); c == "close" {
				t.Errorf("upstream saw Connection %q", c)
			}
		})
	}
}

func TestFloorProxyUpstreamDown(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	resp, err := http.Get(startFloorForTest(t, addr, false) + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
}

func TestFloorProxyMalformedRequest(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a malformed request reached the upstream: %s %s", r.Method, r.URL)
	}))
	defer backend.Close()
	floor := startFloorForTest(t, strings.TrimPrefix(backend.URL, "http://"), false)
	for _, raw := range []string{
		"GARBAGE\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Long: "+strings.Repeat("a", 1000)+"\r\n", 64) + "\r\n",
	} {
		c, err := net.Dial("tcp4", strings.TrimPrefix(floor, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write([]byte(raw))
		b, _ := io.ReadAll(io.LimitReader(c, 4096))
		c.Close()
		if !bytes.HasPrefix(b, []byte("HTTP/1.1 4")) && len(b) != 0 {
			t.Errorf("%.40q: answered %.60q, want a 4xx or a closed connection", raw, b)
		}
	}
}
