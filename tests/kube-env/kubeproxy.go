package main

// Services on the pod network: the upstream kube-proxy (nftables mode) in the node namespace,
// the forwarder that makes the API server reachable at H, and the kube-dns Service.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

const kubeProxyHealthPort = 10256

func (s *supervisor) startPodNetworkServices(ctx context.Context, client kubernetes.Interface, kubeconfig string, apiPort int, p *pki, node string) error {
	// kube-proxy lives in the node namespace, where 127.0.0.1 is not the API server: it uses
	// the forwarder at H.
	nodeKubeconfig := filepath.Join(s.dir, "kubeconfig-node")
	if err := writeKubeconfig(nodeKubeconfig, "https://"+net.JoinHostPort(s.net.hostIP.String(), strconv.Itoa(apiPort)), p); err != nil {
		return err
	}
	n := s.net
	if err := s.startChild("kube-proxy", n.nodeNS,
		"--kubeconfig="+nodeKubeconfig,
		"--hostname-override="+node,
		"--proxy-mode=nftables",
		"--cluster-cidr="+n.podCIDR.String(),
		"--healthz-bind-address="+net.JoinHostPort(n.nodeLinkIP.String(), strconv.Itoa(kubeProxyHealthPort)),
		"--metrics-bind-address="+net.JoinHostPort(n.nodeLinkIP.String(), "10249"),
		// Leave the kernel's conntrack settings alone (the node namespace shares them with
		// this machine for some, and they are not needed at this scale).
		"--conntrack-max-per-core=0",
		"--conntrack-min=0",
		"--conntrack-tcp-timeout-established=0s",
		"--conntrack-tcp-timeout-close-wait=0s",
		"--nodeport-addresses="+n.gateway.String()+"/32",
		"--profiling=false",
	); err != nil {
		return err
	}
	return ensureDNSService(ctx, client, n)
}

// ensureDNSService creates kube-system/kube-dns (ClusterIP .10, no selector) and its
// EndpointSlice pointing at the supervisor's DNS server on H:53.
func ensureDNSService(ctx context.Context, client kubernetes.Interface, n *network) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name: "kube-dns", Namespace: metav1.NamespaceSystem,
			Labels: map[string]string{"k8s-app": "kube-dns", "kubernetes.io/name": "kube-env-dns"},
		},
		Spec: corev1.ServiceSpec{
			ClusterIP: n.dnsServiceIP().String(),
			Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
				{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
			},
		},
	}
	services := client.CoreV1().Services(metav1.NamespaceSystem)
	// A restart on the same data directory finds the Service, perhaps from another address range.
	old, err := services.Get(ctx, svc.Name, metav1.GetOptions{})
	if err == nil && old.Spec.ClusterIP != svc.Spec.ClusterIP {
		if err := services.Delete(ctx, svc.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete the stale Service kube-system/kube-dns: %w", err)
		}
	}
	if err != nil || old.Spec.ClusterIP != svc.Spec.ClusterIP {
		if _, err := services.Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create Service kube-system/kube-dns: %w", err)
		}
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: "kube-dns-kube-env", Namespace: metav1.NamespaceSystem,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: "kube-dns",
				discoveryv1.LabelManagedBy:   "kube-env.drainer.io",
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{n.hostIP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		}},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("dns"), Port: ptr.To(int32(53)), Protocol: ptr.To(corev1.ProtocolUDP)},
			{Name: ptr.To("dns-tcp"), Port: ptr.To(int32(53)), Protocol: ptr.To(corev1.ProtocolTCP)},
		},
	}
	slices := client.DiscoveryV1().EndpointSlices(metav1.NamespaceSystem)
	_, err = slices.Create(ctx, slice, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// A restart on the same data directory may have a new address.
		old, getErr := slices.Get(ctx, slice.Name, metav1.GetOptions{})
		if getErr != nil {
			return getErr
		}
		slice.ResourceVersion = old.ResourceVersion
		_, err = slices.Update(ctx, slice, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("EndpointSlice for kube-dns: %w", err)
	}
	return nil
}

func kubeProxyHealthy(ctx context.Context, n *network) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort(n.nodeLinkIP.String(), strconv.Itoa(kubeProxyHealthPort)) + "/healthz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// forwardAPI relays TCP connections from listen (H:PORT, on the pod network) to the API server
// on 127.0.0.1. TLS passes through untouched. Only the instance's own addresses may connect:
// H is an address of this machine, and Linux would accept packets for it on any interface.
func forwardAPI(ctx context.Context, listen netip.AddrPort, target string, allowed netip.Prefix) error {
	ln, err := net.Listen("tcp", listen.String())
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			from, err := netip.ParseAddrPort(conn.RemoteAddr().String())
			if err != nil || !(allowed.Contains(from.Addr().Unmap()) || from.Addr().IsLoopback()) {
				conn.Close()
				continue
			}
			go relay(conn, target)
		}
	}()
	return nil
}

func relay(in net.Conn, target string) {
	defer in.Close()
	out, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		return
	}
	defer out.Close()
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(out, in)
		if c, ok := out.(*net.TCPConn); ok {
			_ = c.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(in, out)
		if c, ok := in.(*net.TCPConn); ok {
			_ = c.CloseWrite()
		}
		done <- struct{}{}
	}()
	<-done
	<-done
}
