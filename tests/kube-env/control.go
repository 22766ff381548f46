package main

// Restarting a component of a running instance, for tests of what clients do while it is
// away: `kube-env restart --data-dir DIR [--down DURATION] kube-apiserver` asks the instance's
// supervisor, over the Unix socket DIR/control.sock, to stop that component (SIGTERM, as a
// node's kubelet stops a static pod; SIGKILL after restartStopWait), leave it down for
// DURATION, and start it again with the same arguments: the same port, certificates and etcd
// (etcd lives in the supervisor and is not restarted). The command returns once the component
// is back (for the API server: /readyz says ok), or fails with why; the instance keeps running
// either way.

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// restartReadyTimeout bounds how long a restarted component may take to be ready again.
const restartReadyTimeout = 2 * time.Minute

// restartStopWait bounds a stop for a restart. The API server stops listening within a moment
// of SIGTERM but its process then lingers (20 s and more here); what a restart shows clients is
// the same either way, so it is killed sooner than at shutdown.
const restartStopWait = 5 * time.Second

// controlSocket is the supervisor's control socket in data directory dir.
func controlSocket(dir string) string {
	return filepath.Join(dir, "control.sock")
}

// serveControl answers restart requests on DIR/control.sock until ctx ends.
func (s *supervisor) serveControl(ctx context.Context) error {
	path := controlSocket(s.dir)
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go s.answerControl(ctx, conn)
		}
	}()
	return nil
}

// answerControl reads one request line, `restart NAME DOWN`, and answers `ok TOOK` or
// `error WHY`.
func (s *supervisor) answerControl(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		fmt.Fprintf(conn, "error reading the request: %v\n", err)
		return
	}
	fields := strings.Fields(line)
	if len(fields) != 3 || fields[0] != "restart" {
		fmt.Fprintf(conn, "error want: restart NAME DOWN, got %q\n", strings.TrimSpace(line))
		return
	}
	down, err := time.ParseDuration(fields[2])
	if err != nil || down < 0 {
		fmt.Fprintf(conn, "error down %q: want a duration such as 5s\n", fields[2])
		return
	}
	started := time.Now()
	if err := s.restartChild(ctx, fields[1], down); err != nil {
		logf("restart of %s failed: %v", fields[1], err)
		fmt.Fprintf(conn, "error %v\n", err)
		return
	}
	fmt.Fprintf(conn, "ok %s\n", time.Since(started).Round(time.Millisecond))
}

// restartChild stops the named component, waits `down`, starts it again as it was started and
// waits until it is ready (the API server: /readyz).
func (s *supervisor) restartChild(ctx context.Context, name string, down time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ctx.Err() != nil {
		return errors.New("the instance is stopping")
	}
	index := -1
	for i, c := range s.children {
		if c.name == name {
			index = i
		}
	}
	if index < 0 {
		return fmt.Errorf("no component %q (kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy)", name)
	}
	old := s.children[index]
	old.expected.Store(true)
	logf("restart: stopping %s (pid %d)", name, old.cmd.Process.Pid)
	stopChild(old, restartStopWait)
	logf("restart: %s stopped (%v); starting it again in %s", name, old.cmd.ProcessState, down)
	select {
	case <-time.After(down):
	case <-ctx.Done():
		return errors.New("the instance is stopping")
	}
	c, err := s.spawnChild(name, old.ns, old.args)
	if err != nil {
		// Not running now: the instance cannot carry on without it.
		s.exited <- childExit{name: name, err: err}
		return err
	}
	s.children[index] = c
	if name != "kube-apiserver" {
		logf("restart: %s started again (pid %d)", name, c.cmd.Process.Pid)
		return nil
	}
	readyCtx, cancel := context.WithTimeout(ctx, restartReadyTimeout)
	defer cancel()
	for {
		if ok, _ := s.apiServerReady(readyCtx); ok {
			logf("restart: kube-apiserver ready again (pid %d)", c.cmd.Process.Pid)
			return nil
		}
		select {
		case <-c.done:
			return fmt.Errorf("kube-apiserver exited while starting again (see logs/kube-apiserver.log)")
		case <-readyCtx.Done():
			return fmt.Errorf("kube-apiserver not ready within %s of starting again", restartReadyTimeout)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// restartCommand is `kube-env restart --data-dir DIR [--down DURATION] NAME`.
func restartCommand(args []string) error {
	fs := flag.NewFlagSet("restart", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "the running instance's data directory")
	down := fs.Duration("down", 0, "how long the component stays stopped before it is started again")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dataDir == "" || fs.NArg() != 1 {
		return errors.New("usage: kube-env restart --data-dir DIR [--down DURATION] kube-apiserver|kube-controller-manager|kube-scheduler|kube-proxy")
	}
	conn, err := net.DialTimeout("unix", controlSocket(*dataDir), 10*time.Second)
	if err != nil {
		return fmt.Errorf("is kube-env running on %s? %w", *dataDir, err)
	}
	defer conn.Close()
	// The stop (then a kill), the time down, the start and readiness.
	_ = conn.SetDeadline(time.Now().Add(restartStopWait + *down + restartReadyTimeout + 30*time.Second))
	if _, err := fmt.Fprintf(conn, "restart %s %s\n", fs.Arg(0), *down); err != nil {
		return err
	}
	answer, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("no answer from the instance: %w", err)
	}
	answer = strings.TrimSpace(answer)
	if rest, ok := strings.CutPrefix(answer, "ok "); ok {
		fmt.Printf("%s restarted in %s\n", fs.Arg(0), rest)
		return nil
	}
	return errors.New(strings.TrimPrefix(answer, "error "))
}
