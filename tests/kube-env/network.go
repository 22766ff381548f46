package main

// The pod network of one kube-env instance, modelled on a kind node:
//
//	this machine's netns   kenvN (veth, H/30) ── API server forwarder H:PORT, DNS H:53, test servers
//	     │  routes: pod and service CIDRs via N
//	node netns             eth0 (N/30, default via H), bridge kenv-br (G/24), kube-proxy rules
//	     │  one veth per pod, hairpin on
//	pod netns              eth0 (pod IP/24, default via G), lo
//
// Each instance gets a slot k (a /22 of --network-pool, default 10.188.0.0/14, that overlaps no
// route or address of this machine), held with a lock file in /run/kube-env, so concurrent
// instances never share names or addresses: pods use the first /24 (G is .1), Services the
// second (.1 is the "kubernetes" Service, .10 the cluster DNS), the link H/N the third.
//
// Nothing here needs cleaning up after a crash: the node and pod network namespaces are not
// named (no `ip netns` entry, no bind mount); the supervisor holds them by file descriptor and
// its children (kube-proxy, containers) live inside them with PDEATHSIG=SIGKILL. When the
// supervisor dies, the namespaces die, and with them the bridge, the veth pairs (including
// kenvN on this machine, whose peer is in the node namespace), the routes through kenvN and
// every nftables rule of kube-proxy. The next instance to take slot k still deletes a stale
// kenvN it finds, and `kube-env cleanup` does so for every slot whose lock is free.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	slotLockDir     = "/run/kube-env"
	defaultNetPool  = "10.188.0.0/14"
	bridgeName      = "kenv-br"
	maxSlots        = 256
	dnsServiceIndex = 10
)

// network is the instance's node network namespace and addresses.
type network struct {
	slot       int
	lock       *os.File
	pool       netip.Prefix
	podCIDR    netip.Prefix // G = first address
	svcCIDR    netip.Prefix
	hostIP     netip.Addr // H: this machine, as pods see it
	nodeLinkIP netip.Addr // N: the node namespace's end of the link
	gateway    netip.Addr // G: the bridge, the node's InternalIP
	hostIf     string
	nodeNS     *os.File
	node       *netlink.Handle

	mu     sync.Mutex
	used   map[netip.Addr]bool
	nextIP netip.Addr
}

func (n *network) block() netip.Prefix {
	return netip.PrefixFrom(n.podCIDR.Addr(), 22)
}

// kubernetesServiceIP is the ClusterIP the API server gives the "kubernetes" Service.
func (n *network) kubernetesServiceIP() netip.Addr { return n.svcCIDR.Addr().Next() }

func (n *network) dnsServiceIP() netip.Addr {
	a := n.svcCIDR.Addr()
	for i := 0; i < dnsServiceIndex; i++ {
		a = a.Next()
	}
	return a
}

// addrAt returns the address i after the start of prefix p.
func addrAt(p netip.Prefix, i int) netip.Addr {
	b := p.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(i)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func hostIfName(slot int) string { return fmt.Sprintf("kenv%d", slot) }

// setupNetwork takes a free slot (preferred first, if it is one: the slot an earlier run on the
// same data directory had, so its Services keep working) and builds the node namespace.
func setupNetwork(poolSpec string, preferred int) (*network, error) {
	pool, err := netip.ParsePrefix(poolSpec)
	if err != nil || !pool.Addr().Is4() || pool.Bits() > 22 {
		return nil, fmt.Errorf("--network-pool %q: want an IPv4 prefix of /22 or larger", poolSpec)
	}
	pool = pool.Masked()
	if err := os.MkdirAll(slotLockDir, 0o755); err != nil {
		return nil, err
	}
	cleanupStaleLinks()
	slots := min(maxSlots, 1<<(22-pool.Bits()))
	order := make([]int, 0, slots+1)
	if preferred >= 0 && preferred < slots {
		order = append(order, preferred)
	}
	for k := 0; k < slots; k++ {
		if k != preferred {
			order = append(order, k)
		}
	}
	for _, k := range order {
		lock, err := tryLock(filepath.Join(slotLockDir, fmt.Sprintf("slot-%d.lock", k)))
		if err != nil {
			return nil, err
		}
		if lock == nil {
			continue // another live instance
		}
		// Ours now; whatever named kenvK is left over belongs to a dead instance.
		deleteHostLink(hostIfName(k))
		n := &network{slot: k, lock: lock, pool: pool, hostIf: hostIfName(k), used: map[netip.Addr]bool{}}
		base := addrAt(pool, k*1024)
		n.podCIDR = netip.PrefixFrom(base, 24)
		n.svcCIDR = netip.PrefixFrom(addrAt(pool, k*1024+256), 24)
		link := addrAt(pool, k*1024+512)
		n.hostIP, n.nodeLinkIP = link.Next(), link.Next().Next()
		n.gateway = base.Next()
		n.nextIP = n.gateway.Next()
		if clash := overlapsHost(n.block()); clash != "" {
			logf("network: slot %d (%s) overlaps %s on this machine; trying the next", k, n.block(), clash)
			lock.Close()
			continue
		}
		if err := n.build(); err != nil {
			n.close()
			return nil, err
		}
		return n, nil
	}
	return nil, fmt.Errorf("no free network slot in %s (%d slots, lock files in %s)", pool, slots, slotLockDir)
}

// tryLock returns the locked file, or nil if another process holds the lock. The lock goes
// away with the process, however it ends.
func tryLock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

func deleteHostLink(name string) {
	if l, err := netlink.LinkByName(name); err == nil {
		logf("network: deleting %s left by an earlier instance", name)
		_ = netlink.LinkDel(l)
	}
}

// overlapsHost names a route or address of this machine within block, or the cluster DNS
// resolver of this machine, or returns "".
func overlapsHost(block netip.Prefix) string {
	routes, _ := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if p, ok := prefixOf(r.Dst); ok && p.Bits() > 0 && p.Overlaps(block) {
			return "route " + p.String()
		}
	}
	addrs, _ := netlink.AddrList(nil, netlink.FAMILY_V4)
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && block.Contains(ip) {
			return "address " + ip.String()
		}
	}
	for _, ns := range hostNameservers() {
		if block.Contains(ns) {
			return "nameserver " + ns.String()
		}
	}
	return ""
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip, ones), true
}

func ipnet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, 32)}
}

// newNetns creates a network namespace and returns a file descriptor that keeps it alive. The
// calling thread enters it only for the unshare and comes back at once.
func newNetns() (*os.File, error) {
	var ns *os.File
	err := onLockedThread(func(orig int) error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare network namespace: %w", err)
		}
		f, err := os.Open("/proc/thread-self/ns/net")
		ns = f
		return err
	})
	return ns, err
}

// inNetns runs fn on an OS thread that has joined network namespace ns. Processes started by
// fn (os/exec forks from the calling thread) are born in that namespace; their PDEATHSIG is
// tied to this thread, which goes back to Go's pool afterwards and never exits.
func inNetns(ns *os.File, fn func() error) error {
	return onLockedThread(func(int) error {
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("join network namespace: %w", err)
		}
		return fn()
	})
}

// onLockedThread runs fn on a dedicated, locked OS thread and puts the thread back into this
// machine's network namespace afterwards. If that fails, the goroutine exits still locked, and
// Go terminates the thread rather than reuse it in the wrong namespace.
func onLockedThread(fn func(orig int) error) error {
	result := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			result <- err
			return
		}
		defer orig.Close()
		err = fn(int(orig.Fd()))
		if restoreErr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); restoreErr != nil {
			result <- errors.Join(err, fmt.Errorf("return to the host network namespace: %w", restoreErr))
			return // the thread dies with this goroutine
		}
		runtime.UnlockOSThread()
		result <- err
	}()
	return <-result
}

func writeSysctl(ns *os.File, name, value string) error {
	return inNetns(ns, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/")), []byte(value), 0o644)
	})
}

func (n *network) build() error {
	var err error
	if n.nodeNS, err = newNetns(); err != nil {
		return err
	}
	if n.node, err = netlink.NewHandleAt(netns.NsHandle(n.nodeNS.Fd())); err != nil {
		return fmt.Errorf("netlink handle for the node namespace: %w", err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: n.hostIf, MTU: 1500},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(n.nodeNS.Fd())),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create %s: %w", n.hostIf, err)
	}
	host, err := netlink.LinkByName(n.hostIf)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: ipnet(n.hostIP, 30)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", n.hostIP, n.hostIf, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return err
	}

	lo, err := n.node.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := n.node.LinkSetUp(lo); err != nil {
		return err
	}
	eth0, err := n.node.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := n.node.AddrAdd(eth0, &netlink.Addr{IPNet: ipnet(n.nodeLinkIP, 30)}); err != nil {
		return err
	}
	if err := n.node.LinkSetUp(eth0); err != nil {
		return err
	}
	if err := n.node.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.IP(n.hostIP.AsSlice())}); err != nil {
		return fmt.Errorf("node default route: %w", err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName, MTU: 1500}}
	if err := n.node.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge: %w", err)
	}
	if err := n.node.AddrAdd(br, &netlink.Addr{IPNet: ipnet(n.gateway, n.podCIDR.Bits())}); err != nil {
		return err
	}
	if err := n.node.LinkSetUp(br); err != nil {
		return err
	}
	// Forwarding between pods, the link and Services.
	if err := writeSysctl(n.nodeNS, "net.ipv4.ip_forward", "1"); err != nil {
		return fmt.Errorf("enable forwarding in the node namespace: %w", err)
	}
	// Bridged traffic through netfilter, so that kube-proxy's DNAT also applies between two pods
	// on the bridge (what kubelet network plugins set up with br_netfilter).
	if err := writeSysctl(n.nodeNS, "net.bridge.bridge-nf-call-iptables", "1"); err != nil {
		logf("network: net.bridge.bridge-nf-call-iptables: %v (Service traffic between two pods may not be translated)", err)
	}
	for _, p := range []netip.Prefix{n.podCIDR, n.svcCIDR} {
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipnet(p.Addr(), p.Bits()), Gw: net.IP(n.nodeLinkIP.AsSlice())}); err != nil {
			return fmt.Errorf("route %s via %s: %w", p, n.nodeLinkIP, err)
		}
	}
	return nil
}

// close removes the link (and with it the node namespace's side), then lets the namespace go.
func (n *network) close() {
	if l, err := netlink.LinkByName(n.hostIf); err == nil {
		_ = netlink.LinkDel(l)
	}
	if n.node != nil {
		n.node.Close()
	}
	if n.nodeNS != nil {
		n.nodeNS.Close()
	}
	if n.lock != nil {
		n.lock.Close()
	}
}

func (n *network) allocateIP() (netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	// Round robin from the last one given, so an address is not reused at once.
	a := n.nextIP
	for range 254 {
		if !n.podCIDR.Contains(a) || a == n.gateway || a.As4()[3] == 255 || a.As4()[3] == 0 {
			a = n.gateway.Next()
		}
		if !n.used[a] {
			n.used[a] = true
			n.nextIP = a.Next()
			return a, nil
		}
		a = a.Next()
	}
	return netip.Addr{}, fmt.Errorf("no free pod IP in %s", n.podCIDR)
}

func (n *network) releaseIP(a netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.used, a)
}

// sandbox is a pod's network namespace and address.
type sandbox struct {
	ns     *os.File
	ip     netip.Addr
	hostIf string // the veth end in the node namespace
	host   bool   // hostNetwork: the node namespace itself
}

func (n *network) newSandbox(uid string, hostNetwork bool) (*sandbox, error) {
	if hostNetwork {
		return &sandbox{ns: n.nodeNS, ip: n.gateway, host: true}, nil
	}
	ip, err := n.allocateIP()
	if err != nil {
		return nil, err
	}
	ns, err := newNetns()
	if err != nil {
		n.releaseIP(ip)
		return nil, err
	}
	sb := &sandbox{ns: ns, ip: ip, hostIf: "veth" + strings.ReplaceAll(uid, "-", "")[:11]}
	if err := n.wire(sb); err != nil {
		n.teardown(sb)
		return nil, err
	}
	return sb, nil
}

func (n *network) wire(sb *sandbox) error {
	br, err := n.node.LinkByName(bridgeName)
	if err != nil {
		return err
	}
	deleteLinkIn(n.node, sb.hostIf)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: sb.hostIf, MTU: 1500, MasterIndex: br.Attrs().Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(sb.ns.Fd())),
	}
	if err := n.node.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", sb.hostIf, err)
	}
	hostEnd, err := n.node.LinkByName(sb.hostIf)
	if err != nil {
		return err
	}
	if err := n.node.LinkSetUp(hostEnd); err != nil {
		return err
	}
	// A pod reaching itself through a Service IP goes out and back on the same port.
	if err := n.node.LinkSetHairpin(hostEnd, true); err != nil {
		return fmt.Errorf("hairpin on %s: %w", sb.hostIf, err)
	}
	h, err := netlink.NewHandleAt(netns.NsHandle(sb.ns.Fd()))
	if err != nil {
		return err
	}
	defer h.Close()
	for _, name := range []string{"lo", "eth0"} {
		l, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		if name == "eth0" {
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipnet(sb.ip, n.podCIDR.Bits())}); err != nil {
				return err
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
		if name == "eth0" {
			if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IP(n.gateway.AsSlice())}); err != nil {
				return fmt.Errorf("pod default route: %w", err)
			}
		}
	}
	return nil
}

func deleteLinkIn(h *netlink.Handle, name string) {
	if l, err := h.LinkByName(name); err == nil {
		_ = h.LinkDel(l)
	}
}

// teardown deletes the pod's veth pair and drops the namespace; the kernel frees it once the
// last process in it is gone.
func (n *network) teardown(sb *sandbox) {
	if sb == nil || sb.host {
		return
	}
	if sb.hostIf != "" {
		deleteLinkIn(n.node, sb.hostIf)
	}
	if sb.ns != nil {
		sb.ns.Close()
	}
	n.releaseIP(sb.ip)
}

// cleanupStaleLinks deletes kenvK links whose slot lock is free: leftovers of instances that
// died in a way that kept their node namespace alive (which should not happen; see above).
func cleanupStaleLinks() {
	links, err := netlink.LinkList()
	if err != nil {
		return
	}
	for _, l := range links {
		name := l.Attrs().Name
		var k int
		if _, err := fmt.Sscanf(name, "kenv%d", &k); err != nil || hostIfName(k) != name {
			continue
		}
		lock, err := tryLock(filepath.Join(slotLockDir, fmt.Sprintf("slot-%d.lock", k)))
		if err != nil || lock == nil {
			continue
		}
		logf("cleanup: deleting %s (its instance is gone)", name)
		_ = netlink.LinkDel(l)
		lock.Close()
	}
}

// hostNameservers reads this machine's resolvers, for forwarding names outside the cluster.
func hostNameservers() []netip.Addr {
	data, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil && a.Is4() {
				out = append(out, a)
			}
		}
	}
	return out
}

// hostMounts lists the filesystems mounted on this machine that a pod running on the host's
// root filesystem should also see (read-only): everything but "/", kernel and device
// filesystems, /tmp, /run and kube-env's own data directories.
func hostMounts(exclude ...string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	skipTypes := map[string]bool{
		"proc": true, "sysfs": true, "devtmpfs": true, "devpts": true, "cgroup": true, "cgroup2": true,
		"mqueue": true, "tracefs": true, "debugfs": true, "securityfs": true, "bpf": true, "fusectl": true,
		"configfs": true, "autofs": true, "binfmt_misc": true, "nsfs": true, "pstore": true, "hugetlbfs": true,
	}
	skipUnder := append([]string{"/proc", "/sys", "/dev", "/run", "/var/run", "/tmp"}, exclude...)
	seen := map[string]bool{}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 1 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if mp == "/" || skipTypes[g[0]] || seen[mp] {
			continue
		}
		skip := false
		for _, s := range skipUnder {
			if mp == s || strings.HasPrefix(mp, strings.TrimSuffix(s, "/")+"/") {
				skip = true
			}
		}
		if !skip {
			seen[mp] = true
			out = append(out, mp)
		}
	}
	return out
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func readFileString(p string) string {
	data, _ := os.ReadFile(p)
	return string(data)
}
