package main

// Probes (startup, liveness, readiness) and lifecycle hooks (postStart, preStop) with the
// kubelet's semantics: httpGet and tcpSocket from this machine to the pod IP (as a kubelet
// probes from its node), exec inside the container's namespaces (nsenter into its mount, PID,
// network, UTS and IPC namespaces, as the container's user and with its environment), grpc
// (grpc.health.v1), and the sleep action. Readiness drives the pod's Ready condition and so
// its EndpointSlices; a failed liveness or startup probe restarts the container.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

type prober struct {
	started atomic.Bool
	ready   atomic.Bool
	cancel  context.CancelFunc
}

func (p *prober) stop() {
	p.cancel()
}

// startProbes starts the probe loops of one container run. Without a startup probe the run
// counts as started at once; without a readiness probe it is ready once started.
func (w *podWorker) startProbes(c *ctr, p *proc) *prober {
	spec := c.spec
	ctx, cancel := context.WithCancel(w.rt.ctx)
	pr := &prober{cancel: cancel}
	startedCh := make(chan struct{})
	if spec.StartupProbe == nil {
		pr.started.Store(true)
		close(startedCh)
	} else {
		go func() {
			if w.probeLoop(ctx, c, p, "Startup", spec.StartupProbe, func(ok bool) bool {
				if ok {
					pr.started.Store(true)
					close(startedCh)
					w.poke()
					return false // a startup probe stops after its first success
				}
				return true
			}) {
				w.restartUnhealthy(c, p, spec.StartupProbe, "failed startup probe")
			}
		}()
	}
	if spec.ReadinessProbe == nil {
		pr.ready.Store(true)
	} else {
		go func() {
			select {
			case <-startedCh:
			case <-ctx.Done():
				return
			}
			w.probeLoop(ctx, c, p, "Readiness", spec.ReadinessProbe, func(ok bool) bool {
				if pr.ready.Swap(ok) != ok {
					w.poke()
				}
				return true
			})
		}()
	}
	if spec.LivenessProbe != nil {
		go func() {
			select {
			case <-startedCh:
			case <-ctx.Done():
				return
			}
			if w.probeLoop(ctx, c, p, "Liveness", spec.LivenessProbe, func(ok bool) bool { return true }) {
				w.restartUnhealthy(c, p, spec.LivenessProbe, "failed liveness probe")
			}
		}()
	}
	return pr
}

// probeLoop runs probe every period after its initial delay. report gets each thresholded
// result (success after successThreshold successes, failure after failureThreshold failures)
// and returns false to stop. probeLoop returns true when it stopped on a failure threshold that
// the caller acts on (liveness, startup).
func (w *podWorker) probeLoop(ctx context.Context, c *ctr, p *proc, kind string, probe *corev1.Probe, report func(bool) bool) bool {
	period := time.Duration(max(probe.PeriodSeconds, 1)) * time.Second
	if probe.PeriodSeconds == 0 {
		period = 10 * time.Second
	}
	timeout := time.Duration(max(probe.TimeoutSeconds, 1)) * time.Second
	successThreshold := max(probe.SuccessThreshold, 1)
	failureThreshold := max(probe.FailureThreshold, 1)
	if probe.FailureThreshold == 0 {
		failureThreshold = 3
	}
	select {
	case <-time.After(time.Duration(probe.InitialDelaySeconds) * time.Second):
	case <-ctx.Done():
		return false
	}
	successes, failures := int32(0), int32(0)
	ticker := time.NewTicker(period)
	defer ticker.Stop()
	for {
		err := w.runHandler(ctx, c, p, &probe.ProbeHandler, timeout)
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			successes, failures = successes+1, 0
			if successes >= successThreshold && !report(true) {
				return false
			}
		} else {
			successes, failures = 0, failures+1
			w.event(corev1.EventTypeWarning, "Unhealthy", "%s probe failed: %v", kind, err)
			if failures >= failureThreshold {
				if kind != "Readiness" {
					return true
				}
				report(false)
			}
		}
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return false
		}
	}
}

// restartUnhealthy kills a run whose liveness or startup probe failed; the worker then restarts
// it according to restartPolicy.
func (w *podWorker) restartUnhealthy(c *ctr, p *proc, probe *corev1.Probe, why string) {
	w.event(corev1.EventTypeNormal, "Killing", "Container %s %s, will be restarted", c.spec.Name, why)
	grace := w.gracePeriod(false)
	if probe.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*probe.TerminationGracePeriodSeconds) * time.Second
	}
	w.stopContainer(c, p, grace, true, nil)
	w.poke()
}

// runHook runs a lifecycle hook before deadline.
func (w *podWorker) runHook(c *ctr, p *proc, h *corev1.LifecycleHandler, deadline time.Time) error {
	ctx, cancel := context.WithDeadline(w.rt.ctx, deadline)
	defer cancel()
	handler := corev1.ProbeHandler{Exec: h.Exec, HTTPGet: h.HTTPGet, TCPSocket: h.TCPSocket}
	if h.Sleep != nil {
		select {
		case <-time.After(time.Duration(h.Sleep.Seconds) * time.Second):
		case <-ctx.Done():
		case <-p.done:
		}
		return nil
	}
	return w.runHandler(ctx, c, p, &handler, time.Until(deadline))
}

// runHandler runs one probe or hook action; nil means success.
func (w *podWorker) runHandler(ctx context.Context, c *ctr, p *proc, h *corev1.ProbeHandler, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	podIP := w.sb.ip.String()
	switch {
	case h.Exec != nil:
		out, code, err := w.execIn(ctx, c, p, h.Exec.Command)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("command %q exited with %d: %s", strings.Join(h.Exec.Command, " "), code, strings.TrimSpace(string(out)))
		}
		return nil
	case h.HTTPGet != nil:
		g := h.HTTPGet
		port, err := resolvePort(g.Port, c.spec)
		if err != nil {
			return err
		}
		host := g.Host
		if host == "" {
			host = podIP
		}
		scheme := strings.ToLower(string(g.Scheme))
		if scheme == "" {
			scheme = "http"
		}
		u := url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port)), Path: g.Path}
		if u.Path == "" {
			u.Path = "/"
		}
		if path, query, ok := strings.Cut(g.Path, "?"); ok {
			u.Path, u.RawQuery = path, query
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "kube-probe/1.37")
		req.Header.Set("Accept", "*/*")
		for _, hd := range g.HTTPHeaders {
			if strings.EqualFold(hd.Name, "Host") {
				req.Host = hd.Value
			} else {
				req.Header.Add(hd.Name, hd.Value)
			}
		}
		client := &http.Client{
			Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse // a redirect counts as success, as with the kubelet
			},
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 10<<10))
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d (%s)", resp.StatusCode, strings.TrimSpace(string(body)))
		}
		return nil
	case h.TCPSocket != nil:
		port, err := resolvePort(h.TCPSocket.Port, c.spec)
		if err != nil {
			return err
		}
		host := h.TCPSocket.Host
		if host == "" {
			host = podIP
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case h.GRPC != nil:
		conn, err := grpc.NewClient(net.JoinHostPort(podIP, strconv.Itoa(int(h.GRPC.Port))), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: ptr.Deref(h.GRPC.Service, "")})
		if err != nil {
			return err
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("service unhealthy (responded with %q)", resp.Status)
		}
		return nil
	}
	return errors.New("probe has no handler")
}

func resolvePort(port intstr.IntOrString, c *corev1.Container) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(port.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("no port named %q in container %s", port.StrVal, c.Name)
}

// execIn runs cmd inside the container of run p with nsenter, as the container's user and with
// its environment; it returns the combined output and the exit code.
func (w *podWorker) execIn(ctx context.Context, c *ctr, p *proc, cmd []string) ([]byte, int, error) {
	if len(cmd) == 0 {
		return nil, 0, errors.New("exec: empty command")
	}
	uid, gid := procCredentials(p.pid)
	args := []string{"--target", strconv.Itoa(p.pid), "--mount", "--uts", "--ipc", "--net", "--pid",
		"--root", "--wd", "--setuid", uid, "--setgid", gid, "--"}
	x := exec.Command("nsenter", append(args, cmd...)...)
	x.Env = p.env
	x.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var out limitedBuffer
	x.Stdout, x.Stderr = &out, &out
	if err := x.Start(); err != nil {
		return nil, 0, fmt.Errorf("nsenter: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- x.Wait() }()
	select {
	case err := <-done:
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			return out.Bytes(), exitErr.ExitCode(), nil
		}
		return out.Bytes(), 0, err
	case <-ctx.Done():
		// The command and whatever it started inside the container, by process group.
		_ = syscall.Kill(-x.Process.Pid, syscall.SIGKILL)
		<-done
		return out.Bytes(), -1, fmt.Errorf("command %q timed out", strings.Join(cmd, " "))
	}
}

type limitedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := 10<<10 - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(len(p), room)]...)
	}
	return len(p), nil
}

func (b *limitedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf...)
}
