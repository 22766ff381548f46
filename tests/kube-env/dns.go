package main

// Cluster DNS: a small authoritative server for cluster.local in the supervisor, answering
// from the Service and EndpointSlice informers as CoreDNS's kubernetes plugin does, and
// forwarding every other name to this machine's resolvers. It listens on H:53 (UDP and TCP);
// the Service kube-system/kube-dns (ClusterIP .10 of the Service CIDR, no selector, an
// EndpointSlice pointing at H:53) makes it reachable through kube-proxy, and pods' resolv.conf
// name that ClusterIP with the usual search path and ndots:5. It answers:
//
//	SVC.NS.svc.cluster.local          A: the ClusterIP; headless: the ready endpoints; ExternalName: CNAME
//	HOST.SVC.NS.svc.cluster.local     A: the endpoint with that hostname (StatefulSet pods of a headless Service)
//	A-B-C-D.NS.pod.cluster.local      A: A.B.C.D
//	host.kube-env.internal            A: H, this machine as pods reach it
//
// Not served: SRV and PTR records, AAAA (answered empty: the pod network is IPv4 only).

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
)

// HostName resolves, inside pods, to this machine's address on the pod network.
const HostName = "host.kube-env.internal."

const dnsTTL = 5

type dnsServer struct {
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister
	hostIP   netip.Addr
	allowed  netip.Prefix
	upstream []string
}

func (d *dnsServer) serve(ctx context.Context) error {
	addr := net.JoinHostPort(d.hostIP.String(), "53")
	udp, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	tcp, err := net.Listen("tcp", addr)
	if err != nil {
		udp.Close()
		return err
	}
	go func() {
		<-ctx.Done()
		udp.Close()
		tcp.Close()
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			if !d.permitted(from) {
				continue
			}
			req := append([]byte(nil), buf[:n]...)
			go func() {
				if resp := d.handle(req, false); resp != nil {
					_, _ = udp.WriteTo(resp, from)
				}
			}()
		}
	}()
	go func() {
		for {
			conn, err := tcp.Accept()
			if err != nil {
				return
			}
			if !d.permitted(conn.RemoteAddr()) {
				conn.Close()
				continue
			}
			go d.serveTCP(conn)
		}
	}()
	return nil
}

// permitted keeps the server to the instance's own network (pods, the node, this machine).
func (d *dnsServer) permitted(a net.Addr) bool {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	return d.allowed.Contains(ip) || ip.IsLoopback()
}

func (d *dnsServer) serveTCP(conn net.Conn) {
	defer conn.Close()
	for {
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		var size [2]byte
		if _, err := io.ReadFull(conn, size[:]); err != nil {
			return
		}
		req := make([]byte, binary.BigEndian.Uint16(size[:]))
		if _, err := io.ReadFull(conn, req); err != nil {
			return
		}
		resp := d.handle(req, true)
		if resp == nil {
			return
		}
		out := binary.BigEndian.AppendUint16(nil, uint16(len(resp)))
		if _, err := conn.Write(append(out, resp...)); err != nil {
			return
		}
	}
}

func (d *dnsServer) handle(req []byte, overTCP bool) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil || h.Response {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return reply(h, nil, dnsmessage.RCodeFormatError, nil)
	}
	name := strings.ToLower(q.Name.String())
	switch {
	case name == HostName:
		return reply(h, &q, dnsmessage.RCodeSuccess, d.records(q, []netip.Addr{d.hostIP}, ""))
	case name == "cluster.local." || strings.HasSuffix(name, ".cluster.local."):
		ips, cname, rcode := d.resolveCluster(strings.TrimSuffix(strings.TrimSuffix(name, "cluster.local."), "."))
		return reply(h, &q, rcode, d.records(q, ips, cname))
	}
	if resp := d.forward(req, overTCP); resp != nil {
		return resp
	}
	return reply(h, &q, dnsmessage.RCodeServerFailure, nil)
}

// resolveCluster answers a name below cluster.local (given without that suffix).
func (d *dnsServer) resolveCluster(name string) ([]netip.Addr, string, dnsmessage.RCode) {
	var parts []string
	if name != "" {
		parts = strings.Split(name, ".")
	}
	n := len(parts)
	switch {
	case n <= 2 && (n == 0 || parts[n-1] == "svc" || parts[n-1] == "pod"):
		return nil, "", dnsmessage.RCodeSuccess // the zone, "svc", "NS.svc": names that exist
	case n == 3 && parts[2] == "pod":
		ip, err := netip.ParseAddr(strings.ReplaceAll(parts[0], "-", "."))
		if err != nil || !ip.Is4() {
			return nil, "", dnsmessage.RCodeNameError
		}
		return []netip.Addr{ip}, "", dnsmessage.RCodeSuccess
	case n == 3 && parts[2] == "svc":
		svc, err := d.services.Services(parts[1]).Get(parts[0])
		if err != nil {
			return nil, "", dnsmessage.RCodeNameError
		}
		switch {
		case svc.Spec.Type == corev1.ServiceTypeExternalName:
			return nil, svc.Spec.ExternalName, dnsmessage.RCodeSuccess
		case svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone:
			ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
			if err != nil {
				return nil, "", dnsmessage.RCodeServerFailure
			}
			return []netip.Addr{ip}, "", dnsmessage.RCodeSuccess
		}
		return d.endpoints(svc, ""), "", dnsmessage.RCodeSuccess
	case n == 4 && parts[3] == "svc":
		svc, err := d.services.Services(parts[2]).Get(parts[1])
		if err != nil {
			return nil, "", dnsmessage.RCodeNameError
		}
		ips := d.endpoints(svc, parts[0])
		if len(ips) == 0 {
			return nil, "", dnsmessage.RCodeNameError
		}
		return ips, "", dnsmessage.RCodeSuccess
	}
	return nil, "", dnsmessage.RCodeNameError
}

// endpoints are the addresses of the Service's ready endpoints (all of them with
// publishNotReadyAddresses), optionally only the one with a hostname.
func (d *dnsServer) endpoints(svc *corev1.Service, hostname string) []netip.Addr {
	slices, err := d.slices.EndpointSlices(svc.Namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name}))
	if err != nil {
		return nil
	}
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, s := range slices {
		if s.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		for _, ep := range s.Endpoints {
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			if !ready && !svc.Spec.PublishNotReadyAddresses {
				continue
			}
			if hostname != "" && (ep.Hostname == nil || *ep.Hostname != hostname) {
				continue
			}
			for _, a := range ep.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil && !seen[ip] {
					seen[ip] = true
					out = append(out, ip)
				}
			}
		}
	}
	return out
}

type dnsRecord struct {
	ip    netip.Addr
	cname string
}

func (d *dnsServer) records(q dnsmessage.Question, ips []netip.Addr, cname string) []dnsRecord {
	var out []dnsRecord
	if cname != "" && (q.Type == dnsmessage.TypeA || q.Type == dnsmessage.TypeCNAME || q.Type == dnsmessage.TypeALL) {
		return []dnsRecord{{cname: cname}}
	}
	if q.Type == dnsmessage.TypeA || q.Type == dnsmessage.TypeALL {
		for _, ip := range ips {
			out = append(out, dnsRecord{ip: ip})
		}
	}
	return out
}

func reply(h dnsmessage.Header, q *dnsmessage.Question, rcode dnsmessage.RCode, records []dnsRecord) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{
		ID: h.ID, Response: true, OpCode: h.OpCode, Authoritative: true,
		RecursionDesired: h.RecursionDesired, RecursionAvailable: true, RCode: rcode,
	})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil
	}
	if q != nil {
		if err := b.Question(*q); err != nil {
			return nil
		}
	}
	if err := b.StartAnswers(); err != nil {
		return nil
	}
	for _, r := range records {
		hdr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: dnsTTL}
		var err error
		if r.cname != "" {
			target := r.cname
			if !strings.HasSuffix(target, ".") {
				target += "."
			}
			cn, perr := dnsmessage.NewName(target)
			if perr != nil {
				continue
			}
			err = b.CNAMEResource(hdr, dnsmessage.CNAMEResource{CNAME: cn})
		} else {
			err = b.AResource(hdr, dnsmessage.AResource{A: r.ip.As4()})
		}
		if err != nil {
			return nil
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// forward relays a query for a name outside the cluster to this machine's resolvers.
func (d *dnsServer) forward(req []byte, overTCP bool) []byte {
	for _, up := range d.upstream {
		resp, err := exchange(up, req, overTCP)
		if err == nil {
			return resp
		}
	}
	return nil
}

func exchange(server string, req []byte, overTCP bool) ([]byte, error) {
	network := "udp"
	if overTCP {
		network = "tcp"
	}
	conn, err := net.DialTimeout(network, server, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	if overTCP {
		msg := binary.BigEndian.AppendUint16(nil, uint16(len(req)))
		if _, err := conn.Write(append(msg, req...)); err != nil {
			return nil, err
		}
		var size [2]byte
		if _, err := io.ReadFull(conn, size[:]); err != nil {
			return nil, err
		}
		resp := make([]byte, binary.BigEndian.Uint16(size[:]))
		_, err := io.ReadFull(conn, resp)
		return resp, err
	}
	if _, err := conn.Write(req); err != nil {
		return nil, err
	}
	buf := make([]byte, 65535)
	n, err := conn.Read(buf)
	if err != nil {
		return nil, err
	}
	if n < 2 || !bytesEqual(buf[:2], req[:2]) {
		return nil, errors.New("reply with another id")
	}
	return buf[:n], nil
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }
