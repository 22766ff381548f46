package main

// Port forwarding of the kubelet API (/portForward/NAMESPACE/POD[/UID]), so that `kubectl
// port-forward` and clients of pods/portforward (kube-rs' Api::portforward) reach a pod's port
// through the API server as on a real cluster. The API server upgrades the client's request to
// the kubelet: a WebSocket (v4.channel.k8s.io), SPDY, or SPDY tunnelled through a WebSocket;
// the streaming server of k8s.io/cri-streaming serves all three (the tunnel through
// k8s.io/apiserver's TunnelingHandler, as the kubelet does), and each forwarded connection is a
// TCP connection from this process to the pod's IP (which the host reaches, as probes do).

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/util/proxy"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/streaming/pkg/httpstream/wsstream"
)

const (
	// portForwardIdleTimeout closes a port-forward session that carried nothing this long.
	portForwardIdleTimeout = 4 * time.Hour
	// portForwardStreamTimeout bounds the wait for a forwarded connection's streams.
	portForwardStreamTimeout = 30 * time.Second
	// portForwardDialTimeout bounds the connection to the pod's port.
	portForwardDialTimeout = 10 * time.Second
)

// portForward serves /portForward/NAMESPACE/POD[/UID] for a running pod with an IP.
func (a *kubeletAPI) portForward(w http.ResponseWriter, r *http.Request, ns, name, uid string) {
	pod, err := a.client.CoreV1().Pods(ns).Get(r.Context(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || (err == nil && uid != "" && string(pod.UID) != uid) {
		http.Error(w, fmt.Sprintf("pod %s/%s not found", ns, name), http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if pod.Status.PodIP == "" {
		http.Error(w, fmt.Sprintf("pod %s/%s has no IP yet", ns, name), http.StatusBadRequest)
		return
	}
	forwarder := podPorts{ip: pod.Status.PodIP}
	var handler http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		options, err := portforward.NewV4Options(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		portforward.ServePortForward(w, r, forwarder, name, string(pod.UID), options,
			portForwardIdleTimeout, portForwardStreamTimeout, portforward.SupportedProtocols)
	})
	if wsstream.IsWebSocketRequestWithTunnelingProtocol(r) {
		handler = proxy.NewTunnelingHandler(handler)
	}
	handler.ServeHTTP(w, r)
}

// podPorts forwards streams to the ports of one pod's IP.
type podPorts struct{ ip string }

// PortForward copies between stream and a new connection to the pod's port until the pod's
// side closes (the client's end of stream is passed on as a half-close).
func (p podPorts) PortForward(ctx context.Context, name string, uid string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	dial, cancel := context.WithTimeout(ctx, portForwardDialTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dial, "tcp", net.JoinHostPort(p.ip, strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("pod %s: port %d: %w", name, port, err)
	}
	defer conn.Close()
	go func() {
		_, _ = io.Copy(conn, stream)
		if tcp, ok := conn.(*net.TCPConn); ok {
			_ = tcp.CloseWrite()
		}
	}()
	_, err = io.Copy(stream, conn)
	return err
}
