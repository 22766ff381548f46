package main

// The parts of the kubelet API that kube-env serves: container logs, so that `kubectl logs`
// (and any client of pods/log) works, and port forwarding (portforward.go). It listens on the node IP (G:10250, in the node network
// namespace, where the API server reaches it as it reaches a kubelet: the nodes' InternalIP and
// status.daemonEndpoints.kubeletEndpoint), with TLS and client certificates of the cluster CA
// (the API server presents the admin certificate). exec, attach and the rest of the kubelet API
// answer 404.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

const kubeletPort = 10250

type kubeletAPI struct {
	client  kubernetes.Interface
	dataDir string
}

func (s *supervisor) startKubeletAPI(ctx context.Context, client kubernetes.Interface, p *pki) error {
	cert, err := tls.LoadX509KeyPair(p.kubeletCert, p.kubeletKey)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.caPEM)
	var ln net.Listener
	addr := net.JoinHostPort(s.net.gateway.String(), strconv.Itoa(kubeletPort))
	if err := inNetns(s.net.nodeNS, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		return fmt.Errorf("kubelet API on %s: %w", addr, err)
	}
	api := &kubeletAPI{client: client, dataDir: s.dir}
	srv := &http.Server{
		Handler:           http.HandlerFunc(api.serve),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
			MinVersion:   tls.VersionTLS12,
		},
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	return nil
}

func (a *kubeletAPI) serve(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if parts[0] == "portForward" && (len(parts) == 3 || len(parts) == 4) {
		uid := ""
		if len(parts) == 4 {
			uid = parts[3]
		}
		a.portForward(w, r, parts[1], parts[2], uid)
		return
	}
	if r.Method != http.MethodGet || len(parts) != 4 || parts[0] != "containerLogs" {
		http.Error(w, "kube-env serves only /containerLogs/NAMESPACE/POD/CONTAINER and /portForward/NAMESPACE/POD of the kubelet API", http.StatusNotFound)
		return
	}
	ns, name, container := parts[1], parts[2], parts[3]
	q := r.URL.Query()
	pod, err := a.client.CoreV1().Pods(ns).Get(r.Context(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		http.Error(w, fmt.Sprintf("pod %s/%s not found", ns, name), http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	dir := filepath.Join(a.dataDir, "logs", "pods", fmt.Sprintf("%s_%s_%s", ns, name, pod.UID), container)
	runs := logRuns(dir)
	previous := q.Get("previous") == "true"
	var file string
	switch {
	case previous && len(runs) < 2:
		http.Error(w, fmt.Sprintf("previous terminated container %q in pod %q not found", container, name), http.StatusBadRequest)
		return
	case previous:
		file = runs[len(runs)-2]
	case len(runs) > 0:
		file = runs[len(runs)-1]
	default:
		// A simulated pod, or a container that has not run yet: nothing was written.
		w.Header().Set("Content-Type", "text/plain")
		return
	}
	data, err := os.ReadFile(file)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	size := int64(len(data))
	if n, err := strconv.Atoi(q.Get("tailLines")); err == nil && n >= 0 {
		data = tailLines(data, n)
	}
	limit := int64(-1)
	if n, err := strconv.ParseInt(q.Get("limitBytes"), 10, 64); err == nil && n > 0 {
		limit = n
	}
	w.Header().Set("Content-Type", "text/plain")
	written, _ := writeLimited(w, data, limit)
	if q.Get("follow") != "true" || previous || (limit >= 0 && written >= limit) {
		return
	}
	if limit >= 0 {
		limit -= written
	}
	a.follow(r.Context(), w, pod, container, file, size, limit)
}

// follow streams what the run appends to file until it ends (another run starts, the pod goes,
// the container is no longer running) or the client goes away.
func (a *kubeletAPI) follow(ctx context.Context, w http.ResponseWriter, pod *corev1.Pod, container, file string, offset, limit int64) {
	flusher, _ := w.(http.Flusher)
	f, err := os.Open(file)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return
	}
	lastCheck := time.Now()
	for {
		buf := make([]byte, 32<<10)
		n, _ := f.Read(buf)
		if n > 0 {
			written, err := writeLimited(w, buf[:n], limit)
			if err != nil {
				return
			}
			if limit >= 0 {
				if limit -= written; limit <= 0 {
					return
				}
			}
			if flusher != nil {
				flusher.Flush()
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		if time.Since(lastCheck) > time.Second {
			lastCheck = time.Now()
			if !a.stillRunning(ctx, pod, container, file) {
				// One last read for what was written just before the end.
				rest, _ := io.ReadAll(f)
				_, _ = writeLimited(w, rest, limit)
				return
			}
		}
	}
}

func (a *kubeletAPI) stillRunning(ctx context.Context, pod *corev1.Pod, container, file string) bool {
	runs := logRuns(filepath.Dir(file))
	if len(runs) == 0 || runs[len(runs)-1] != file {
		return false
	}
	cur, err := a.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil || cur.UID != pod.UID {
		return false
	}
	for _, cs := range append(cur.Status.InitContainerStatuses, cur.Status.ContainerStatuses...) {
		if cs.Name == container {
			return cs.State.Running != nil
		}
	}
	return false
}

// logRuns lists DIR/N.log by N.
func logRuns(dir string) []string {
	entries, _ := os.ReadDir(dir)
	type run struct {
		n    int
		path string
	}
	var runs []run
	for _, e := range entries {
		if n, err := strconv.Atoi(strings.TrimSuffix(e.Name(), ".log")); err == nil && strings.HasSuffix(e.Name(), ".log") {
			runs = append(runs, run{n, filepath.Join(dir, e.Name())})
		}
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].n < runs[j].n })
	out := make([]string, len(runs))
	for i, r := range runs {
		out[i] = r.path
	}
	return out
}

func tailLines(data []byte, n int) []byte {
	var lines [][]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		lines = append(lines, append(append([]byte(nil), sc.Bytes()...), '\n'))
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, nil)
}

func writeLimited(w io.Writer, data []byte, limit int64) (int64, error) {
	if limit >= 0 && int64(len(data)) > limit {
		data = data[:limit]
	}
	n, err := w.Write(data)
	return int64(n), err
}
