package main

// Containers as processes. A container is `kube-env container-init SPEC` (package
// containerinit) cloned with new mount, PID, UTS and IPC namespaces from a thread inside the
// pod's network namespace; it assembles the root filesystem and execs the command, which is then
// PID 1 of its PID namespace, as with containerd: SIGTERM reaches only that process (and is
// ignored unless it installed a handler, as in any container), and when it exits the kernel
// kills everything else in the namespace, so no child outlives its container. The supervisor
// is the direct parent (it reaps the exit status) and sets PDEATHSIG=SIGKILL, so a kill -9 of
// the supervisor takes every container down with it.

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"drainer.test/kube-env/containerinit"
)

// proc is one run of a container.
type proc struct {
	cmd     *exec.Cmd
	pid     int
	started time.Time
	done    chan struct{} // closed once the process has been reaped
	dir     string        // the run's directory (spec, root mount point, termination log)
	env     []string      // the container's environment, for exec probes and hooks
	stopSig syscall.Signal

	// Set before done is closed.
	exitCode int32
	signal   syscall.Signal
	finished time.Time

	killOnce    sync.Once
	killed      chan struct{} // closed when a stop of this run has finished
	postStarted atomic.Bool   // its postStart hook has succeeded (or it has none)
}

// containerStartError is a failure of the container init before the command ran (the
// command not found, a mount failed): the kubelet reports it as exit code 128, StartError.
type containerStartError struct{ msg string }

func (e *containerStartError) Error() string { return e.msg }

// startProcess starts a container run described by spec in the network namespace ns, with
// stdout and stderr appended to logPath.
func startProcess(self string, ns *os.File, dir string, spec *containerinit.Spec, logPath string) (*proc, error) {
	specPath := filepath.Join(dir, "spec.json")
	data, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(specPath, data, 0o600); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer statusR.Close()
	cmd := selfCommand(self, containerinit.Arg, specPath)
	cmd.Env = []string{} // the container's environment is in the spec
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.ExtraFiles = []*os.File{statusW}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
		Pdeathsig:  syscall.SIGKILL,
	}
	err = inNetns(ns, cmd.Start)
	statusW.Close()
	if err != nil {
		return nil, fmt.Errorf("start container init: %w", err)
	}
	p := &proc{cmd: cmd, pid: cmd.Process.Pid, dir: dir, done: make(chan struct{}), killed: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.finished = time.Now()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Signaled():
				p.signal = ws.Signal()
				p.exitCode = 128 + int32(ws.Signal())
			default:
				p.exitCode = int32(ws.ExitStatus())
			}
		} else if err != nil {
			p.exitCode = 255
		}
		close(p.done)
	}()
	// Empty when the exec happened (the pipe is close-on-exec); the reason otherwise.
	_ = statusR.SetReadDeadline(time.Now().Add(containerInitTimeout))
	msg, err := io.ReadAll(io.LimitReader(statusR, 64<<10))
	p.started = time.Now()
	if err != nil && len(msg) == 0 {
		p.kill(syscall.SIGKILL)
		msg = []byte(fmt.Sprintf("container init did not finish within %s: %v", containerInitTimeout, err))
	}
	if len(msg) > 0 {
		<-p.done
		return p, &containerStartError{msg: string(msg)}
	}
	return p, nil
}

// selfCommand runs this very binary again: /proc/self/exe, which stays the running build even
// if the file was rebuilt (or deleted) since; argv[0] is its path, for ps.
func selfCommand(self string, args ...string) *exec.Cmd {
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Args[0] = self
	return cmd
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends sig to the container's PID 1. SIGKILL to it ends the whole PID namespace.
func (p *proc) kill(sig syscall.Signal) {
	if !p.exited() {
		_ = syscall.Kill(p.pid, sig)
	}
}

// stop runs the kubelet's container stop: preStop (if any, within the grace period), the stop
// signal, and SIGKILL when the grace period is over or force is closed. It returns once the
// process is gone. Concurrent calls for the same run wait for the first.
func (p *proc) stop(grace time.Duration, preStop func(deadline time.Time), sig syscall.Signal, force <-chan struct{}) {
	first := false
	p.killOnce.Do(func() { first = true })
	if !first {
		select {
		case <-p.killed:
		case <-p.done:
		}
		return
	}
	defer close(p.killed)
	start := time.Now()
	if preStop != nil && !p.exited() {
		preStop(start.Add(grace))
		// As the kubelet: what is left of the grace period, but at least 2 s.
		grace = max(grace-time.Since(start), minGracePeriod)
		start = time.Now()
	}
	p.kill(sig)
	timer := time.NewTimer(time.Until(start.Add(grace)))
	defer timer.Stop()
	select {
	case <-p.done:
		return
	case <-timer.C:
	case <-force:
	}
	p.kill(syscall.SIGKILL)
	<-p.done
}

const (
	minGracePeriod       = 2 * time.Second
	containerInitTimeout = 60 * time.Second
)

// termination describes the ended run as the kubelet does in containerStatuses.
func (p *proc) termination(containerID string, message string) *corev1.ContainerStateTerminated {
	t := &corev1.ContainerStateTerminated{
		ExitCode:    p.exitCode,
		Signal:      int32(p.signal),
		StartedAt:   metav1.NewTime(p.started),
		FinishedAt:  metav1.NewTime(p.finished),
		ContainerID: containerID,
		Message:     message,
		Reason:      "Completed",
	}
	if p.exitCode != 0 {
		t.Reason = "Error"
	}
	return t
}

// readTerminationMessage reads what the container wrote to its termination message path, or
// with FallbackToLogsOnError the tail of its log, as the kubelet does (at most 4096 bytes).
func readTerminationMessage(c *corev1.Container, p *proc, logPath string) string {
	data, _ := os.ReadFile(filepath.Join(p.dir, "termination-log"))
	if len(data) > 4096 {
		data = data[:4096]
	}
	if len(data) == 0 && p.exitCode != 0 && c.TerminationMessagePolicy == corev1.TerminationMessageFallbackToLogsOnError {
		logData, _ := os.ReadFile(logPath)
		lines := strings.Split(strings.TrimRight(string(logData), "\n"), "\n")
		if len(lines) > 80 {
			lines = lines[len(lines)-80:]
		}
		data = []byte(strings.Join(lines, "\n"))
		if len(data) > 2048 {
			data = data[len(data)-2048:]
		}
	}
	return string(data)
}

// procCredentials reads the effective uid and gid of a running container process (for exec
// probes and hooks, which run as the container's user).
func procCredentials(pid int) (uid, gid string) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return "0", "0"
	}
	uid, gid = "0", "0"
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "Uid:" {
			uid = f[2]
		}
		if len(f) >= 3 && f[0] == "Gid:" {
			gid = f[2]
		}
	}
	return uid, gid
}
