package main

import (
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// cleanupCommand implements `kube-env cleanup [--data-dir DIR]`, which `scripts/kube-env stop`
// runs after the supervisor has exited. By design nothing should be left (see network.go and
// containerinit): this removes the stale kenvK links of dead instances and, with --data-dir,
// any mount under DIR on this machine, and says so if it finds any.
func cleanupCommand(args []string) error {
	fs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "data directory of a stopped instance")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cleanupStaleLinks()
	if *dataDir == "" {
		return nil
	}
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		return err
	}
	lock, err := tryLock(filepath.Join(dir, "lock"))
	if err != nil {
		return err
	}
	if lock == nil {
		return fmt.Errorf("kube-env is still running on %s", dir)
	}
	defer lock.Close()
	var mounts []string
	for _, mp := range allMountPoints() {
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	// Deepest first.
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	var errs []error
	for _, mp := range mounts {
		logf("cleanup: unmounting %s", mp)
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

func allMountPoints() []string {
	var out []string
	for _, line := range strings.Split(readFileString("/proc/self/mountinfo"), "\n") {
		if f := strings.Fields(line); len(f) >= 5 {
			out = append(out, unescapeMountinfo(f[4]))
		}
	}
	return out
}
