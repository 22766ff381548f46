package main

// Images: kube-env has no registry and pulls nothing. It learns images from OCI image layouts
// (a directory with oci-layout, index.json and blobs/, or a tar of one, optionally gzipped) and
// from `docker save` archives, given with `kube-env run --image NAME=PATH` or added to a running
// instance with `kube-env image add --data-dir DIR NAME=PATH`. Each image is unpacked once into
// DATA/images/store/<manifest digest>/rootfs (layers applied in order, whiteouts honoured) with
// its config beside it; DATA/images/names/<name> points at it. A container of a known image runs
// on an overlay of that rootfs; imagePullPolicy is ignored (the local copy is always used).
//
// Names are compared in their normalised form, as the kubelet's image references are:
// "drainer:dev", "docker.io/library/drainer:dev" and "library/drainer:dev" are one image;
// "drainer" means "drainer:latest".

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"drainer.test/kube-env/containerinit"
)

type imageStore struct {
	dir string // DATA/images
}

// image is an unpacked image.
type image struct {
	Name   string // normalised
	Digest string // of the manifest, "sha256:..."
	Rootfs string
	Config ocispec.ImageConfig
}

func normalizeImageName(name string) (string, error) {
	ref, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return "", fmt.Errorf("image name %q: %w", name, err)
	}
	return reference.TagNameOnly(ref).String(), nil
}

func (s *imageStore) namePath(normalized string) string {
	return filepath.Join(s.dir, "names", url.PathEscape(normalized))
}

// lookup finds a known image by the name a pod uses, or returns nil.
func (s *imageStore) lookup(name string) *image {
	if s == nil {
		return nil
	}
	n, err := normalizeImageName(name)
	if err != nil {
		return nil
	}
	digest, err := os.ReadFile(s.namePath(n))
	if err != nil {
		return nil
	}
	dir := filepath.Join(s.dir, "store", strings.TrimSpace(string(digest)))
	var img image
	data, err := os.ReadFile(filepath.Join(dir, "image.json"))
	if err != nil || json.Unmarshal(data, &img) != nil {
		return nil
	}
	// The store keeps one copy per digest: several names may share it, and each reports
	// its own name (as a runtime reports the repository digest of the name the pod used).
	img.Name = n
	img.Rootfs = filepath.Join(dir, "rootfs")
	return &img
}

// add imports the image at src (a layout directory, a tar of one, or a docker archive) as name.
func (s *imageStore) add(name, src string) (*image, error) {
	normalized, err := normalizeImageName(name)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{"store", "names", "tmp"} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	tmp, err := os.MkdirTemp(filepath.Join(s.dir, "tmp"), "import-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	layout := src
	fi, err := os.Stat(src)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	if !fi.IsDir() {
		layout = filepath.Join(tmp, "layout")
		if err := unpackArchive(src, layout); err != nil {
			return nil, fmt.Errorf("image %s: unpack %s: %w", name, src, err)
		}
	}
	manifest, digest, err := readManifest(layout, normalized)
	if err != nil {
		return nil, fmt.Errorf("image %s from %s: %w", name, src, err)
	}
	var cfg ocispec.Image
	if err := readJSONBlob(layout, manifest.Config, &cfg); err != nil {
		return nil, fmt.Errorf("image %s: config: %w", name, err)
	}
	storeKey := strings.ReplaceAll(digest, ":", "-")
	final := filepath.Join(s.dir, "store", storeKey)
	if _, err := os.Stat(filepath.Join(final, "image.json")); err != nil {
		staged := filepath.Join(tmp, "image")
		rootfs := filepath.Join(staged, "rootfs")
		if err := os.MkdirAll(rootfs, 0o755); err != nil {
			return nil, err
		}
		for i, layer := range manifest.Layers {
			if err := applyLayerBlob(layout, layer, rootfs); err != nil {
				return nil, fmt.Errorf("image %s: layer %d (%s): %w", name, i, layer.Digest, err)
			}
		}
		meta, _ := json.MarshalIndent(image{Name: normalized, Digest: digest, Config: cfg.Config}, "", "  ")
		if err := os.WriteFile(filepath.Join(staged, "image.json"), meta, 0o644); err != nil {
			return nil, err
		}
		if err := os.Rename(staged, final); err != nil && !errors.Is(err, os.ErrExist) && !isNotEmpty(err) {
			return nil, err
		}
	}
	tmpName := filepath.Join(tmp, "name")
	if err := os.WriteFile(tmpName, []byte(storeKey+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(tmpName, s.namePath(normalized)); err != nil {
		return nil, err
	}
	img := s.lookup(normalized)
	if img == nil {
		return nil, fmt.Errorf("image %s: not found after import", name)
	}
	return img, nil
}

func isNotEmpty(err error) bool { return errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) }

// list returns the names of the known images.
func (s *imageStore) list() []string {
	entries, _ := os.ReadDir(filepath.Join(s.dir, "names"))
	var out []string
	for _, e := range entries {
		if n, err := url.PathUnescape(e.Name()); err == nil {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// readManifest finds the image manifest in a layout directory: from index.json (following
// nested indexes, preferring the entry named after the tag, then linux/amd64), or from a docker
// archive's manifest.json.
func readManifest(layout, normalized string) (*ocispec.Manifest, string, error) {
	if _, err := os.Stat(filepath.Join(layout, "index.json")); err != nil {
		return readDockerArchive(layout, normalized)
	}
	var index ocispec.Index
	if err := readJSON(filepath.Join(layout, "index.json"), &index); err != nil {
		return nil, "", err
	}
	tag := normalized[strings.LastIndex(normalized, ":")+1:]
	for depth := 0; depth < 4; depth++ {
		desc, err := pickManifest(index.Manifests, tag, normalized)
		if err != nil {
			return nil, "", err
		}
		switch desc.MediaType {
		case ocispec.MediaTypeImageIndex, "application/vnd.docker.distribution.manifest.list.v2+json":
			index = ocispec.Index{}
			if err := readJSONBlob(layout, desc, &index); err != nil {
				return nil, "", err
			}
			continue
		}
		var m ocispec.Manifest
		if err := readJSONBlob(layout, desc, &m); err != nil {
			return nil, "", err
		}
		if m.MediaType == ocispec.MediaTypeImageIndex {
			// An index whose descriptor did not say so.
			index = ocispec.Index{}
			if err := readJSONBlob(layout, desc, &index); err != nil {
				return nil, "", err
			}
			continue
		}
		return &m, string(desc.Digest), nil
	}
	return nil, "", errors.New("image indexes nested too deeply")
}

func pickManifest(ms []ocispec.Descriptor, tag, normalized string) (ocispec.Descriptor, error) {
	if len(ms) == 0 {
		return ocispec.Descriptor{}, errors.New("index.json lists no manifest")
	}
	for _, m := range ms {
		if ref := m.Annotations[ocispec.AnnotationRefName]; ref != "" && (ref == tag || ref == normalized) {
			return m, nil
		}
	}
	for _, m := range ms {
		if m.Platform != nil && m.Platform.OS == "linux" && m.Platform.Architecture == "amd64" {
			return m, nil
		}
	}
	for _, m := range ms {
		if m.Platform == nil || m.Platform.OS == "linux" {
			return m, nil
		}
	}
	return ocispec.Descriptor{}, errors.New("no linux image in the index")
}

// readDockerArchive reads `docker save` output: manifest.json names the config and layer tars.
func readDockerArchive(dir, normalized string) (*ocispec.Manifest, string, error) {
	var entries []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := readJSON(filepath.Join(dir, "manifest.json"), &entries); err != nil {
		return nil, "", fmt.Errorf("neither an OCI layout (index.json) nor a docker archive (manifest.json): %w", err)
	}
	if len(entries) == 0 {
		return nil, "", errors.New("manifest.json lists no image")
	}
	pick := entries[0]
	for _, e := range entries {
		for _, t := range e.RepoTags {
			if n, err := normalizeImageName(t); err == nil && n == normalized {
				pick = e
			}
		}
	}
	// Expressed as descriptors with paths instead of digests; blobPath understands both.
	m := &ocispec.Manifest{Config: ocispec.Descriptor{Digest: digest.Digest("path:" + pick.Config)}}
	for _, l := range pick.Layers {
		m.Layers = append(m.Layers, ocispec.Descriptor{Digest: digest.Digest("path:" + l)})
	}
	sum := sha256.New()
	data, err := os.ReadFile(filepath.Join(dir, filepath.Clean("/"+pick.Config)))
	if err != nil {
		return nil, "", err
	}
	sum.Write(data)
	return m, "sha256:" + hex.EncodeToString(sum.Sum(nil)), nil
}

func blobPath(layout string, d ocispec.Descriptor) (string, hash.Hash, string, error) {
	s := string(d.Digest)
	if p, ok := strings.CutPrefix(s, "path:"); ok {
		return filepath.Join(layout, filepath.Clean("/"+p)), nil, "", nil
	}
	algo, hexDigest, ok := strings.Cut(s, ":")
	if !ok || algo != "sha256" || len(hexDigest) != 64 || strings.ContainsAny(hexDigest, "/.") {
		return "", nil, "", fmt.Errorf("unsupported digest %q", s)
	}
	return filepath.Join(layout, "blobs", algo, hexDigest), sha256.New(), hexDigest, nil
}

func readJSONBlob(layout string, d ocispec.Descriptor, v any) error {
	p, h, want, err := blobPath(layout, d)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	if h != nil {
		h.Write(data)
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			return fmt.Errorf("blob %s has digest sha256:%s", d.Digest, got)
		}
	}
	return json.Unmarshal(data, v)
}

func readJSON(p string, v any) error {
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

// decompressed detects gzip and zstd by their magic numbers (media types lie often enough).
func decompressed(r io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReader(r)
	magic, _ := br.Peek(4)
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		z, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return z, func() { z.Close() }, nil
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		z, err := zstd.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return z, z.Close, nil
	}
	return br, func() {}, nil
}

// unpackArchive extracts a tar (of an OCI layout or a docker archive) into dir. Only regular
// files and directories matter there.
func unpackArchive(src, dir string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	r, done, err := decompressed(f)
	if err != nil {
		return err
	}
	defer done()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			out, err := os.Create(target)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			out.Close()
			if err != nil {
				return err
			}
		}
	}
}

func applyLayerBlob(layout string, d ocispec.Descriptor, rootfs string) error {
	p, h, want, err := blobPath(layout, d)
	if err != nil {
		return err
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	var src io.Reader = f
	if h != nil {
		src = io.TeeReader(f, h)
	}
	r, done, err := decompressed(src)
	if err != nil {
		return err
	}
	defer done()
	if err := applyLayer(tar.NewReader(r), rootfs); err != nil {
		return err
	}
	if h != nil {
		// Read what the tar reader left (padding), then check the blob's digest.
		if _, err := io.Copy(io.Discard, src); err != nil {
			return err
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			return fmt.Errorf("layer blob has digest sha256:%s, not %s", got, d.Digest)
		}
	}
	return nil
}

// applyLayer applies one layer tar to rootfs as an OCI runtime's unpacker does: whiteouts
// (.wh.NAME) delete from lower layers, an opaque whiteout (.wh..wh..opq) empties its directory
// of lower-layer entries; paths are resolved inside rootfs, never outside it.
func applyLayer(tr *tar.Reader, rootfs string) error {
	created := map[string]bool{}
	type dirTime struct {
		path string
		t    time.Time
	}
	var dirTimes []dirTime
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		rel := path.Clean("/" + h.Name)
		if rel == "/" {
			continue
		}
		dir, base := path.Split(rel)
		parent, err := resolveInRoot(rootfs, dir)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return err
		}
		if base == ".wh..wh..opq" {
			entries, _ := os.ReadDir(parent)
			for _, e := range entries {
				if !created[path.Join(dir, e.Name())] {
					if err := os.RemoveAll(filepath.Join(parent, e.Name())); err != nil {
						return err
					}
				}
			}
			continue
		}
		if name, ok := strings.CutPrefix(base, ".wh."); ok {
			if err := os.RemoveAll(filepath.Join(parent, name)); err != nil {
				return err
			}
			continue
		}
		target := filepath.Join(parent, base)
		created[rel] = true
		if fi, err := os.Lstat(target); err == nil && !(fi.IsDir() && h.Typeflag == tar.TypeDir) {
			if err := os.RemoveAll(target); err != nil {
				return err
			}
		}
		mode := os.FileMode(h.Mode & 0o777)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, mode); err != nil {
				return err
			}
			dirTimes = append(dirTimes, dirTime{target, h.ModTime})
		case tar.TypeReg:
			out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, target); err != nil {
				return err
			}
		case tar.TypeLink:
			src, err := resolveInRoot(rootfs, path.Clean("/"+h.Linkname))
			if err != nil {
				return err
			}
			if err := os.Link(src, target); err != nil {
				return fmt.Errorf("hard link %s -> %s: %w", rel, h.Linkname, err)
			}
			continue // shares the inode (and metadata) of its target
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[h.Typeflag]
			dev := unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))
			if err := unix.Mknod(target, kind|uint32(mode), int(dev)); err != nil {
				continue // device nodes are not needed: containers get their own /dev
			}
		default:
			continue
		}
		if err := os.Lchown(target, h.Uid, h.Gid); err != nil {
			return err
		}
		if h.Typeflag != tar.TypeSymlink {
			// After chown, which clears setuid/setgid bits.
			if err := os.Chmod(target, mode|tarSpecialBits(h.Mode)); err != nil {
				return err
			}
		}
		for k, v := range h.PAXRecords {
			if attr, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				_ = unix.Lsetxattr(target, attr, []byte(v), 0)
			}
		}
		ts := []unix.Timespec{unix.NsecToTimespec(h.AccessTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
		if h.AccessTime.IsZero() {
			ts[0] = ts[1]
		}
		_ = unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	// Directory times last: adding entries changed them.
	for i := len(dirTimes) - 1; i >= 0; i-- {
		t := unix.NsecToTimespec(dirTimes[i].t.UnixNano())
		_ = unix.UtimesNanoAt(unix.AT_FDCWD, dirTimes[i].path, []unix.Timespec{t, t}, unix.AT_SYMLINK_NOFOLLOW)
	}
	return nil
}

// tarSpecialBits maps the tar header's setuid/setgid/sticky bits (c_ISUID etc.) to Go's.
func tarSpecialBits(m int64) os.FileMode {
	var out os.FileMode
	if m&0o4000 != 0 {
		out |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= os.ModeSticky
	}
	return out
}

// resolveInRoot is the container init's path resolution: symlinks followed inside root.
func resolveInRoot(root, p string) (string, error) { return containerinit.ResolveInRoot(root, p) }

// imageCommand implements `kube-env image add|list --data-dir DIR [NAME=PATH...]`.
func imageCommand(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: kube-env image add|list --data-dir DIR [NAME=PATH...]")
	}
	verb := args[0]
	fs := flag.NewFlagSet("image "+verb, flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "the data directory of a kube-env instance")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *dataDir == "" {
		return errors.New("--data-dir is required")
	}
	store := &imageStore{dir: filepath.Join(*dataDir, "images")}
	switch verb {
	case "add":
		if fs.NArg() == 0 {
			return errors.New("usage: kube-env image add --data-dir DIR NAME=PATH...")
		}
		for _, spec := range fs.Args() {
			name, p, ok := strings.Cut(spec, "=")
			if !ok || name == "" || p == "" {
				return fmt.Errorf("image %q: want NAME=PATH", spec)
			}
			started := time.Now()
			img, err := store.add(name, p)
			if err != nil {
				return err
			}
			fmt.Printf("%s %s (imported in %s)\n", img.Name, img.Digest, time.Since(started).Round(time.Millisecond))
		}
		return nil
	case "list":
		for _, n := range store.list() {
			if img := store.lookup(n); img != nil {
				fmt.Printf("%s %s\n", img.Name, img.Digest)
			}
		}
		return nil
	}
	return fmt.Errorf("unknown image command %q", verb)
}

// imageFlags collects repeated --image NAME=PATH flags.
type imageFlags []string

func (f *imageFlags) String() string     { return strings.Join(*f, ",") }
func (f *imageFlags) Set(v string) error { *f = append(*f, v); return nil }
