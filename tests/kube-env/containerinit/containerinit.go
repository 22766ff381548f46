// Package containerinit turns a freshly cloned process into a pod container: `kube-env
// container-init SPEC` builds the container's root filesystem and mounts in its own mount
// namespace, pivots into it and executes the container's command, which becomes PID 1 of the
// container's PID namespace (as under containerd/runc). The supervisor starts it with new mount,
// PID, UTS and IPC namespaces, from a thread that has joined the pod's network namespace.
//
// It runs from this package's init function. Go initialises packages in import-path order once
// their own imports are initialised, and this package imports only the standard library, so
// "drainer.test/kube-env/containerinit" initialises before the Kubernetes packages (github.com,
// go.etcd.io, golang.org, google.golang.org, k8s.io, sigs.k8s.io): a container starts in
// milliseconds and small, instead of paying for the initialisation of the whole control plane
// that shares this binary.
//
// Protocol with the supervisor: the spec is a JSON file (Spec); file descriptor 3 is the write
// end of a pipe, closed on exec. If anything fails before the exec, the reason is written to it
// and the process exits 128; an empty read means the command is running.
package containerinit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

const (
	prSetNoNewPrivs = 38 // PR_SET_NO_NEW_PRIVS from <linux/prctl.h>
	prCapBSetDrop   = 24 // PR_CAPBSET_DROP
)

// Arg is the subcommand that runs a container init: `kube-env container-init SPEC.json`.
const Arg = "container-init"

// Spec is everything a container needs that is not already given by the namespaces it was
// cloned into. Paths in Source fields are on this machine; Target paths are inside the container.
type Spec struct {
	// Root is an empty directory on this machine where the container's root is assembled.
	Root string
	// Scratch is an empty directory where a tmpfs holds the overlay's upper and work dirs: the
	// container's writable layer, discarded with the container as with containerd.
	Scratch string
	// Lower is the read-only lower layer: an image's unpacked root filesystem, or "/" for pods
	// whose image kube-env does not know (they see this machine's root filesystem).
	Lower string
	// HostRoot is true when Lower is this machine's "/": other filesystems mounted on this
	// machine (HostBinds) are then bound read-only at the same place, and /tmp and /run are
	// private tmpfs, since an overlay of "/" does not cross mount points.
	HostRoot  bool
	HostBinds []string
	Mounts    []Mount
	Hostname  string
	Args      []string
	Env       []string
	// WorkingDir is created if missing, as runc does.
	WorkingDir string
	// User is the image's user ("uid", "uid:gid", "name", "name:group", or ""), resolved against
	// the container's own /etc/passwd and /etc/group. RunAsUser/RunAsGroup override it.
	User               string
	RunAsUser          *int64
	RunAsGroup         *int64
	SupplementalGroups []int64
	ReadOnlyRoot       bool
	NoNewPrivs         bool
	// AllCapabilities keeps every capability (a privileged container); otherwise the
	// capability bounding set is cut down to Capabilities (names without "CAP_"), as runc
	// does with the set containerd computes. A process running as uid 0 then has exactly
	// those capabilities after its exec; any other uid has none (no ambient capabilities).
	AllCapabilities bool
	Capabilities    []string
}

// Mount binds Source (a directory or a file) at Target inside the container.
type Mount struct {
	Source   string
	Target   string
	ReadOnly bool
}

func init() {
	if len(os.Args) != 3 || os.Args[1] != Arg {
		return
	}
	// Credentials set below with raw system calls apply to this thread only; the exec must
	// happen on the same thread.
	runtime.LockOSThread()
	status := os.NewFile(3, "status")
	syscall.CloseOnExec(3)
	err := run(os.Args[2])
	// run returns only on failure.
	fmt.Fprintf(status, "%v", err)
	fmt.Fprintf(os.Stderr, "kube-env: container failed to start: %v\n", err)
	os.Exit(128)
}

func run(specPath string) error {
	data, err := os.ReadFile(specPath)
	if err != nil {
		return err
	}
	var s Spec
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("read spec: %w", err)
	}
	// Nothing done here may propagate back to this machine's mount namespace.
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := setupRoot(&s); err != nil {
		return err
	}
	if err := pivot(s.Root); err != nil {
		return err
	}
	if s.Hostname != "" {
		if err := syscall.Sethostname([]byte(s.Hostname)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
	}
	uid, gid, groups, err := resolveUser(&s)
	if err != nil {
		return err
	}
	wd := s.WorkingDir
	if wd == "" {
		wd = "/"
	}
	if err := os.MkdirAll(wd, 0o755); err != nil {
		return fmt.Errorf("create working directory %s: %w", wd, err)
	}
	if err := os.Chdir(wd); err != nil {
		return fmt.Errorf("change to working directory %s: %w", wd, err)
	}
	if len(s.Args) == 0 {
		return errors.New("no command specified")
	}
	path, err := lookPath(s.Args[0], s.Env)
	if err != nil {
		return err
	}
	if !s.AllCapabilities {
		if err := boundCapabilities(s.Capabilities); err != nil {
			return err
		}
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("setgid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("setuid %d: %w", uid, err)
	}
	if s.NoNewPrivs {
		if _, _, errno := syscall.RawSyscall6(syscall.SYS_PRCTL, prSetNoNewPrivs, 1, 0, 0, 0, 0); errno != 0 {
			return fmt.Errorf("no_new_privs: %w", errno)
		}
	}
	err = syscall.Exec(path, s.Args, s.Env)
	return fmt.Errorf("exec %q: %w", s.Args[0], err)
}

func setupRoot(s *Spec) error {
	if err := syscall.Mount("tmpfs", s.Scratch, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("mount scratch tmpfs: %w", err)
	}
	upper, work := filepath.Join(s.Scratch, "upper"), filepath.Join(s.Scratch, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", s.Lower, upper, work)
	if err := syscall.Mount("overlay", s.Root, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay root (%s): %w", opts, err)
	}
	if s.HostRoot {
		for _, b := range s.HostBinds {
			target := filepath.Join(s.Root, b)
			if fi, err := os.Stat(target); err != nil || !fi.IsDir() {
				continue // hidden below another filesystem: nothing to mount on
			}
			if err := bindMount(b, target, true); err != nil {
				return fmt.Errorf("bind %s: %w", b, err)
			}
		}
	}
	if err := mountKernelFS(s.Root); err != nil {
		return err
	}
	if s.HostRoot {
		for _, d := range []struct {
			path string
			mode string
		}{{"tmp", "1777"}, {"run", "0755"}} {
			target, err := mkdirInRoot(s.Root, d.path)
			if err != nil {
				return err
			}
			if err := syscall.Mount("tmpfs", target, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode="+d.mode); err != nil {
				return fmt.Errorf("mount /%s: %w", d.path, err)
			}
		}
	}
	// Parents before children, as runtimes do, so a mount at /a/b is not hidden by one at /a.
	mounts := append([]Mount(nil), s.Mounts...)
	sort.SliceStable(mounts, func(i, j int) bool { return depth(mounts[i].Target) < depth(mounts[j].Target) })
	for _, m := range mounts {
		fi, err := os.Stat(m.Source)
		if err != nil {
			return fmt.Errorf("mount source for %s: %w", m.Target, err)
		}
		var target string
		if fi.IsDir() {
			target, err = mkdirInRoot(s.Root, m.Target)
		} else {
			target, err = fileInRoot(s.Root, m.Target)
		}
		if err != nil {
			return fmt.Errorf("mount point %s: %w", m.Target, err)
		}
		if err := bindMount(m.Source, target, m.ReadOnly); err != nil {
			return fmt.Errorf("mount %s at %s: %w", m.Source, m.Target, err)
		}
	}
	if s.ReadOnlyRoot {
		if err := syscall.Mount("", s.Root, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("make root read-only: %w", err)
		}
	}
	return nil
}

func depth(p string) int { return strings.Count(filepath.Clean("/"+p), "/") }

func bindMount(source, target string, readOnly bool) error {
	if err := syscall.Mount(source, target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return err
	}
	if readOnly {
		return syscall.Mount("", target, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, "")
	}
	return nil
}

// mountKernelFS gives the container its own /proc (of its PID namespace), a read-only /sys and
// a minimal /dev, as runc does.
func mountKernelFS(root string) error {
	proc, err := mkdirInRoot(root, "proc")
	if err != nil {
		return err
	}
	if err := syscall.Mount("proc", proc, "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	sys, err := mkdirInRoot(root, "sys")
	if err != nil {
		return err
	}
	if err := syscall.Mount("sysfs", sys, "sysfs", syscall.MS_RDONLY|syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		if err := bindMount("/sys", sys, true); err != nil {
			return fmt.Errorf("mount /sys: %w", err)
		}
	}
	dev, err := mkdirInRoot(root, "dev")
	if err != nil {
		return err
	}
	if err := syscall.Mount("tmpfs", dev, "tmpfs", syscall.MS_NOSUID, "mode=0755,size=65536k"); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	for _, n := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		f, err := os.OpenFile(filepath.Join(dev, n), os.O_CREATE|os.O_WRONLY, 0o666)
		if err != nil {
			return err
		}
		f.Close()
		if err := bindMount("/dev/"+n, filepath.Join(dev, n), false); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", n, err)
		}
	}
	for _, d := range []string{"pts", "shm", "mqueue"} {
		if err := os.Mkdir(filepath.Join(dev, d), 0o755); err != nil {
			return err
		}
	}
	if err := syscall.Mount("devpts", filepath.Join(dev, "pts"), "devpts", syscall.MS_NOSUID|syscall.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return fmt.Errorf("mount /dev/pts: %w", err)
	}
	if err := syscall.Mount("shm", filepath.Join(dev, "shm"), "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, "mode=1777,size=65536k"); err != nil {
		return fmt.Errorf("mount /dev/shm: %w", err)
	}
	// Its own IPC namespace makes a fresh mqueue possible; not essential.
	_ = syscall.Mount("mqueue", filepath.Join(dev, "mqueue"), "mqueue", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, "")
	for name, target := range map[string]string{
		"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2", "core": "/proc/kcore",
	} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	return nil
}

// pivot makes root the container's "/" and detaches this machine's root from its view.
func pivot(root string) error {
	if err := os.Chdir(root); err != nil {
		return err
	}
	if err := syscall.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := syscall.Unmount(".", syscall.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the old root: %w", err)
	}
	return os.Chdir("/")
}

// ResolveInRoot resolves path inside root as the container will see it: symbolic links are
// followed, absolute ones relative to root, and ".." never leaves root. Components that do not
// exist are appended as they are.
func ResolveInRoot(root, path string) (string, error) {
	current := "/"
	rest := strings.Split(filepath.Clean("/"+path), "/")
	for links := 0; len(rest) > 0; {
		part := rest[0]
		rest = rest[1:]
		if part == "" || part == "." {
			continue
		}
		if part == ".." {
			current = filepath.Dir(current)
			continue
		}
		next := filepath.Join(current, part)
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			current = next
			continue
		}
		if links++; links > 40 {
			return "", fmt.Errorf("too many symbolic links in %s", path)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			current = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return filepath.Join(root, current), nil
}

func mkdirInRoot(root, path string) (string, error) {
	p, err := ResolveInRoot(root, path)
	if err != nil {
		return "", err
	}
	return p, os.MkdirAll(p, 0o755)
}

func fileInRoot(root, path string) (string, error) {
	p, err := ResolveInRoot(root, path)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return "", err
	}
	return p, f.Close()
}

func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		if err := executable(file); err != nil {
			return "", fmt.Errorf("exec: %q: %w", file, err)
		}
		return file, nil
	}
	pathEnv := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathEnv = v
		}
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH", file)
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return syscall.EACCES
	}
	return nil
}

// resolveUser applies the image's user and the pod's securityContext, reading the container's
// own /etc/passwd and /etc/group as container runtimes do: a user name must exist there; a
// numeric user takes the primary group of its passwd entry if it has one (else 0); the groups
// listing the user by name are added to the supplementary groups.
func resolveUser(s *Spec) (uid, gid int, groups []int, err error) {
	userPart, groupPart, _ := strings.Cut(s.User, ":")
	passwd := readColonFile("/etc/passwd")
	group := readColonFile("/etc/group")
	byUID := func(u int) (name string, primary int) {
		for _, f := range passwd {
			if len(f) >= 4 && f[2] == strconv.Itoa(u) {
				primary, _ = strconv.Atoi(f[3])
				return f[0], primary
			}
		}
		return "", 0
	}
	name := ""
	switch n, convErr := strconv.Atoi(userPart); {
	case userPart == "":
		name, gid = byUID(0)
	case convErr == nil:
		uid = n
		name, gid = byUID(n)
	default:
		found := false
		for _, f := range passwd {
			if len(f) >= 4 && f[0] == userPart {
				uid, _ = strconv.Atoi(f[2])
				gid, _ = strconv.Atoi(f[3])
				name, found = userPart, true
				break
			}
		}
		if !found {
			return 0, 0, nil, fmt.Errorf("unable to find user %s: no matching entries in passwd file", userPart)
		}
	}
	if s.RunAsUser != nil {
		uid = int(*s.RunAsUser)
		name, gid = byUID(uid)
	}
	if groupPart != "" && s.RunAsGroup == nil {
		if n, convErr := strconv.Atoi(groupPart); convErr == nil {
			gid = n
		} else {
			found := false
			for _, f := range group {
				if len(f) >= 3 && f[0] == groupPart {
					gid, _ = strconv.Atoi(f[2])
					found = true
					break
				}
			}
			if !found {
				return 0, 0, nil, fmt.Errorf("unable to find group %s: no matching entries in group file", groupPart)
			}
		}
	}
	if s.RunAsGroup != nil {
		gid = int(*s.RunAsGroup)
	}
	groups = []int{}
	seen := map[int]bool{}
	add := func(g int) {
		if !seen[g] {
			seen[g] = true
			groups = append(groups, g)
		}
	}
	if name != "" {
		for _, f := range group {
			if len(f) < 4 {
				continue
			}
			for _, member := range strings.Split(f[3], ",") {
				if g, convErr := strconv.Atoi(f[2]); member == name && convErr == nil {
					add(g)
				}
			}
		}
	}
	for _, g := range s.SupplementalGroups {
		add(int(g))
	}
	return uid, gid, groups, nil
}

func readColonFile(path string) [][]string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, strings.Split(line, ":"))
	}
	return out
}

// capabilityNumbers are the Linux capabilities by name (<linux/capability.h>).
var capabilityNumbers = map[string]int{
	"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
	"SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10,
	"NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
	"SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
	"SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
	"SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
	"SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
	"BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

// CapabilityKnown reports whether name (without "CAP_") is a Linux capability.
func CapabilityKnown(name string) bool {
	_, ok := capabilityNumbers[name]
	return ok
}

// AllCapabilities names every Linux capability kube-env knows.
func AllCapabilities() []string {
	out := make([]string, 0, len(capabilityNumbers))
	for name := range capabilityNumbers {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// boundCapabilities drops from the bounding set every capability that keep does not name.
// It must run while this process still has CAP_SETPCAP (before the setuid).
func boundCapabilities(keep []string) error {
	kept := map[int]bool{}
	for _, name := range keep {
		n, ok := capabilityNumbers[name]
		if !ok {
			return fmt.Errorf("unknown capability %q", name)
		}
		kept[n] = true
	}
	last := 40
	if data, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
			last = n
		}
	}
	for c := 0; c <= last; c++ {
		if kept[c] {
			continue
		}
		if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prCapBSetDrop, uintptr(c), 0); errno != 0 && errno != syscall.EINVAL {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, errno)
		}
	}
	return nil
}
