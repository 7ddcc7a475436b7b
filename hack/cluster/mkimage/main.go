// Command mkimage makes the test cluster's two images without any outside
// registry and pushes them to a plain-HTTP registry on loopback:
//
//	mkimage base   REF          a base for ko: /etc/passwd, /etc/group, /tmp, user 65532
//	mkimage binary REF BINARY   the base with BINARY as /NAME, its entrypoint (the pod
//	                            sandbox's pause, CoreDNS)
//
// Each is a single-layer linux/amd64 OCI image; it prints REF@DIGEST.
package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/crane"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// nonRoot is the numeric user of every image: runAsNonRoot needs a number.
const nonRoot = "65532"

type entry struct {
	name string
	mode int64
	dir  bool
	data []byte
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: mkimage base REF | mkimage binary REF BINARY")
	}
	files := []entry{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnonroot:x:65532:\n")},
		{name: "home/", mode: 0o755, dir: true},
		{name: "home/nonroot/", mode: 0o700, dir: true},
		{name: "tmp/", mode: 0o1777, dir: true},
	}
	var entrypoint []string
	switch args[0] {
	case "base":
	case "binary":
		if len(args) != 3 {
			return fmt.Errorf("usage: mkimage binary REF BINARY")
		}
		bin, err := os.ReadFile(args[2])
		if err != nil {
			return fmt.Errorf("reading the binary: %w", err)
		}
		name := filepath.Base(args[2])
		files = append(files, entry{name: name, mode: 0o755, data: bin})
		entrypoint = []string{"/" + name}
	default:
		return fmt.Errorf("unknown image %q: base or binary", args[0])
	}
	img, err := build(files, entrypoint)
	if err != nil {
		return err
	}
	if err := crane.Push(img, args[1], crane.Insecure); err != nil {
		return fmt.Errorf("pushing %s: %w", args[1], err)
	}
	d, err := img.Digest()
	if err != nil {
		return fmt.Errorf("digest: %w", err)
	}
	fmt.Printf("%s@%s\n", args[1], d)
	return nil
}

func build(files []entry, entrypoint []string) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: epoch, Format: tar.FormatPAX}
		if f.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(f.data))
		}
		if f.name == "home/nonroot/" {
			h.Uid, h.Gid = 65532, 65532
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("tar %s: %w", f.name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("tar %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("tar: %w", err)
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.User = nonRoot
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/nonroot"}
	cf.Config.Entrypoint = entrypoint
	cf.Created = v1.Time{Time: epoch}
	return mutate.ConfigFile(img, cf)
}
