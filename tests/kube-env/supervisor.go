package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
)

// Bounds on every wait of the supervisor. Generous for a loaded 2-core machine.
const (
	etcdStartTimeout  = 60 * time.Second
	componentStopWait = 20 * time.Second
)

func runSupervisor(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "directory for all state (default: a new temporary directory)")
	nodes := fs.Int("nodes", 2, "number of nodes")
	readyTimeout := fs.Duration("ready-timeout", 3*time.Minute, "give up if the cluster is not usable within this time")
	podRuntime := fs.String("pod-runtime", "process", "process: pods with something to run run as processes (runtime.go), the others are simulated; simulated: every pod is simulated, no pod network")
	pool := fs.String("network-pool", defaultNetPool, "IPv4 range from which the instance takes a free /22 for pods, Services and its link to this machine")
	var images imageFlags
	fs.Var(&images, "image", "NAME=PATH: an OCI image layout (directory or tar) or docker archive to run as image NAME (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *nodes < 1 {
		return errors.New("--nodes must be at least 1")
	}
	if *podRuntime != "process" && *podRuntime != "simulated" {
		return fmt.Errorf("--pod-runtime %q: want process or simulated", *podRuntime)
	}
	if *dataDir == "" {
		d, err := os.MkdirTemp("", "kube-env.")
		if err != nil {
			return err
		}
		*dataDir = d
	}
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		return err
	}
	for _, sub := range []string{"logs", "volumes"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	// One supervisor per data directory: a second one would run the same pods again.
	lock, err := tryLock(filepath.Join(dir, "lock"))
	if err != nil {
		return err
	}
	if lock == nil {
		return fmt.Errorf("another kube-env is running on %s", dir)
	}
	defer lock.Close()
	// A stale marker from an earlier run in the same directory must not signal readiness.
	_ = os.Remove(filepath.Join(dir, "ready"))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	s := &supervisor{dir: dir, exited: make(chan childExit, 4), simErr: make(chan error, 3)}
	err = s.run(ctx, *nodes, *readyTimeout, *podRuntime == "process", *pool, images)
	s.shutdown()
	if err != nil {
		return err
	}
	logf("stopped cleanly")
	return nil
}

type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	// How it was started, to start it again (restartChild).
	ns   *os.File
	args []string
	// Set before a requested stop (a restart): its exit is then not a failure.
	expected atomic.Bool
}

type childExit struct {
	name string
	err  error
}

type supervisor struct {
	dir  string
	etcd *embed.Etcd
	// mu guards children: a restart (control.go) replaces one while shutdown stops them all.
	mu       sync.Mutex
	children []*child // in start order; stopped in reverse
	client   *kubernetes.Clientset
	exited   chan childExit
	simErr   chan error // failures of the in-process node simulator, provisioner and DNS
	cancel   context.CancelFunc
	net      *network
	runtime  *podRuntime
	simDone  chan struct{}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kube-env: "+format+"\n", args...)
}

// checkProcessRuntime fails early, with what to install, if the process runtime cannot work.
func checkProcessRuntime() error {
	if os.Geteuid() != 0 {
		return errors.New("the process pod runtime needs root (network and mount namespaces); run as root or use --pod-runtime=simulated")
	}
	for tool, pkg := range map[string]string{"nft": "nftables", "nsenter": "util-linux"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is missing (kube-proxy and exec probes need it): apt-get install %s, or use --pod-runtime=simulated", tool, pkg)
		}
	}
	return nil
}

func (s *supervisor) run(ctx context.Context, nodes int, readyTimeout time.Duration, processes bool, pool string, images []string) error {
	started := time.Now()
	ctx, s.cancel = context.WithCancel(ctx)
	readyCtx, readyCancel := context.WithTimeout(ctx, readyTimeout)
	defer readyCancel()

	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
	var sans []net.IP
	var nodeIP net.IP
	if processes {
		if err := checkProcessRuntime(); err != nil {
			return err
		}
		slotFile := filepath.Join(s.dir, "network-slot")
		preferred := -1
		if data, err := os.ReadFile(slotFile); err == nil {
			preferred, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		}
		if s.net, err = setupNetwork(pool, preferred); err != nil {
			return fmt.Errorf("pod network: %w", err)
		}
		if preferred >= 0 && preferred != s.net.slot {
			logf("pod network: slot %d of the earlier run is taken; Services created then keep their old ClusterIPs and will not route", preferred)
		}
		if err := os.WriteFile(slotFile, []byte(strconv.Itoa(s.net.slot)+"\n"), 0o644); err != nil {
			return err
		}
		logf("pod network: slot %d, pods %s, Services %s, this machine %s, node %s",
			s.net.slot, s.net.podCIDR, s.net.svcCIDR, s.net.hostIP, s.net.gateway)
		sans = []net.IP{net.IP(s.net.hostIP.AsSlice()), net.IP(s.net.kubernetesServiceIP().AsSlice())}
		nodeIP = net.IP(s.net.gateway.AsSlice())
	}
	store := &imageStore{dir: filepath.Join(s.dir, "images")}
	for _, spec := range images {
		name, path, ok := strings.Cut(spec, "=")
		if !ok {
			return fmt.Errorf("--image %q: want NAME=PATH", spec)
		}
		t := time.Now()
		img, err := store.add(name, path)
		if err != nil {
			return err
		}
		logf("image %s (%s) imported in %s", img.Name, img.Digest, time.Since(t).Round(time.Millisecond))
	}
	p, err := generatePKI(filepath.Join(s.dir, "pki"), sans, nodeIP)
	if err != nil {
		return fmt.Errorf("generate certificates: %w", err)
	}
	if err := s.startEtcd(etcdClient, etcdPeer); err != nil {
		return err
	}

	server := "https://127.0.0.1:" + strconv.Itoa(apiPort)
	kubeconfig := filepath.Join(s.dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, server, p); err != nil {
		return err
	}
	issuer := "https://kubernetes.default.svc.cluster.local"
	apiArgs := []string{
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(etcdClient),
		"--tls-cert-file=" + p.serverCert,
		"--tls-private-key-file=" + p.serverKey,
		"--client-ca-file=" + p.caCert,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=" + issuer,
		"--service-account-key-file=" + p.saPub,
		"--service-account-signing-key-file=" + p.saKey,
		"--api-audiences=" + issuer,
		"--allow-privileged=true",
		"--profiling=false",
		"--cert-dir=" + filepath.Join(s.dir, "pki", "apiserver-generated"),
	}
	if s.net != nil {
		// Pods reach the API server through the "kubernetes" Service, whose endpoint is this
		// machine's address on the pod network (H), where the supervisor forwards to 127.0.0.1.
		apiArgs = append(apiArgs,
			"--advertise-address="+s.net.hostIP.String(),
			"--service-cluster-ip-range="+s.net.svcCIDR.String(),
			// pods/log goes to the nodes' kubelet API (kubelet_api.go) at their InternalIP.
			"--kubelet-preferred-address-types=InternalIP",
			"--kubelet-client-certificate="+p.adminCert,
			"--kubelet-client-key="+p.adminKey,
			"--kubelet-certificate-authority="+p.caCert)
	} else {
		apiArgs = append(apiArgs,
			"--advertise-address=127.0.0.1",
			// The endpoint reconciler refuses loopback addresses; without a pod network the
			// "kubernetes" Service is unused.
			"--endpoint-reconciler-type=none",
			// Cluster IPs are only allocated, never routed: nothing listens on them.
			"--service-cluster-ip-range=10.96.0.0/16")
	}
	if err := s.startChild("kube-apiserver", nil, apiArgs...); err != nil {
		return err
	}
	if s.net != nil {
		if err := forwardAPI(ctx, netip.AddrPortFrom(s.net.hostIP, uint16(apiPort)), "127.0.0.1:"+strconv.Itoa(apiPort), s.net.block()); err != nil {
			return fmt.Errorf("API server forwarder: %w", err)
		}
	}

	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 100, 200
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	s.client = client
	if err := s.waitFor(readyCtx, "kube-apiserver /readyz", s.apiServerReady); err != nil {
		return err
	}
	logf("kube-apiserver ready at %s after %s", server, time.Since(started).Round(time.Millisecond))

	if err := s.startChild("kube-controller-manager", nil,
		"--kubeconfig="+kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=0", // no metrics/health endpoint needed; readiness is checked through the API
		"--controllers=*",
		"--service-account-private-key-file="+p.saKey,
		"--root-ca-file="+p.caCert,
		"--cluster-signing-cert-file="+p.caCert,
		"--cluster-signing-key-file="+p.caKey,
		"--use-service-account-credentials=false",
		"--profiling=false",
	); err != nil {
		return err
	}
	if err := s.startChild("kube-scheduler", nil,
		"--kubeconfig="+kubeconfig,
		"--authentication-kubeconfig="+kubeconfig,
		"--authorization-kubeconfig="+kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--profiling=false",
	); err != nil {
		return err
	}

	nodeNames := make([]string, nodes)
	for i := range nodeNames {
		nodeNames[i] = fmt.Sprintf("kube-env-node-%d", i+1)
	}
	sim := &nodeSimulator{client: client, nodes: nodeNames, hostIP: "127.0.0.1"}
	prov := &provisioner{client: client, root: filepath.Join(s.dir, "volumes")}
	// They return nil only when ctx ends (a requested stop), so only errors are reported.
	report := func(what string, run func(context.Context) error) {
		if err := run(ctx); err != nil && ctx.Err() == nil {
			s.simErr <- fmt.Errorf("%s: %w", what, err)
		}
	}
	if s.net != nil {
		if err := s.startPodNetworkServices(ctx, client, kubeconfig, apiPort, p, nodeNames[0]); err != nil {
			return err
		}
		factory := informers.NewSharedInformerFactory(client, 0)
		services := factory.Core().V1().Services()
		slices := factory.Discovery().V1().EndpointSlices()
		_ = services.Informer()
		_ = slices.Informer()
		factory.Start(ctx.Done())
		if !cache.WaitForCacheSync(readyCtx.Done(), services.Informer().HasSynced, slices.Informer().HasSynced) {
			return errors.New("timed out waiting for the Service and EndpointSlice caches")
		}
		dns := &dnsServer{
			services: services.Lister(), slices: slices.Lister(), hostIP: s.net.hostIP, allowed: s.net.block(),
		}
		for _, ns := range hostNameservers() {
			dns.upstream = append(dns.upstream, net.JoinHostPort(ns.String(), "53"))
		}
		if err := dns.serve(ctx); err != nil {
			return fmt.Errorf("cluster DNS on %s:53: %w", s.net.hostIP, err)
		}
		if err := s.startKubeletAPI(ctx, client, p); err != nil {
			return err
		}
		broadcaster := record.NewBroadcaster(record.WithContext(ctx))
		broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
		recorders := map[string]record.EventRecorder{}
		for _, n := range nodeNames {
			recorders[n] = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: n})
		}
		recorder := func(node string) record.EventRecorder {
			if r, ok := recorders[node]; ok {
				return r
			}
			return recorders[nodeNames[0]]
		}
		s.runtime, err = newPodRuntime(ctx, client, s.dir, s.net, store, recorder, services.Lister(), nodeAllocatable())
		if err != nil {
			return err
		}
		sim.hostIP, sim.runtime, sim.kubeletPort = s.net.gateway.String(), s.runtime, kubeletPort
	}
	s.simDone = make(chan struct{})
	go func() {
		defer close(s.simDone)
		report("node simulator", sim.run)
	}()
	go report("volume provisioner", prov.run)

	// Ready means usable, not just "API answers": nodes Ready (simulator up), the default
	// StorageClass exists (provisioner up), the default ServiceAccount exists (controllers up)
	// and, with the pod network, kube-proxy has programmed the Services.
	if err := s.waitFor(readyCtx, "nodes, default StorageClass and ServiceAccount", func(ctx context.Context) (bool, error) {
		for _, n := range nodeNames {
			node, err := client.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{})
			if err != nil || !nodeReady(node) {
				return false, nil
			}
		}
		if _, err := client.StorageV1().StorageClasses().Get(ctx, storageClassName, metav1.GetOptions{}); err != nil {
			return false, nil
		}
		if s.net != nil && !kubeProxyHealthy(ctx, s.net) {
			return false, nil
		}
		_, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		return err
	}
	if err := s.writeEnvFile(kubeconfig); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(s.dir, "ready"), []byte(kubeconfig+"\n"), 0o644); err != nil {
		return err
	}
	if err := s.serveControl(ctx); err != nil {
		return err
	}
	logf("cluster ready after %s (data in %s, logs in %s)", time.Since(started).Round(time.Millisecond), s.dir, filepath.Join(s.dir, "logs"))
	fmt.Printf("KUBECONFIG=%s\n", kubeconfig)

	select {
	case <-ctx.Done():
		logf("stopping")
		return nil
	case e := <-s.exited:
		return s.childFailure(e)
	case err := <-s.simErr:
		return err
	}
}

// writeEnvFile writes DATA/env: the facts a test needs about this instance, as shell
// assignments (`scripts/kube-env env` prints them with export).
func (s *supervisor) writeEnvFile(kubeconfig string) error {
	self, _ := os.Executable()
	vars := [][2]string{
		{"KUBECONFIG", kubeconfig},
		{"KUBE_ENV_DATA_DIR", s.dir},
		{"KUBE_ENV_BIN", self},
	}
	if s.net != nil {
		vars = append(vars,
			[2]string{"KUBE_ENV_HOST_IP", s.net.hostIP.String()},
			[2]string{"KUBE_ENV_NODE_IP", s.net.gateway.String()},
			[2]string{"KUBE_ENV_POD_CIDR", s.net.podCIDR.String()},
			[2]string{"KUBE_ENV_SERVICE_CIDR", s.net.svcCIDR.String()},
			[2]string{"KUBE_ENV_CLUSTER_DNS", s.net.dnsServiceIP().String()})
	}
	var b strings.Builder
	for _, v := range vars {
		fmt.Fprintf(&b, "%s=%s\n", v[0], v[1])
	}
	return os.WriteFile(filepath.Join(s.dir, "env"), []byte(b.String()), 0o644)
}

func nodeAllocatable() corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("16"),
		corev1.ResourceMemory:           resource.MustParse("64Gi"),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
}

// waitFor polls cond every 250ms until it is true, the context ends or a component dies.
func (s *supervisor) waitFor(ctx context.Context, what string, cond func(context.Context) (bool, error)) error {
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case e := <-s.exited:
			return false, s.childFailure(e)
		case err := <-s.simErr:
			return false, err
		default:
		}
		return cond(ctx)
	})
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("timed out waiting for %s (logs in %s)", what, filepath.Join(s.dir, "logs"))
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted while waiting for %s", what)
	}
	return err
}

func (s *supervisor) childFailure(e childExit) error {
	log := filepath.Join(s.dir, "logs", e.name+".log")
	tail, _ := exec.Command("tail", "-n", "40", log).Output()
	return fmt.Errorf("%s exited unexpectedly (%v); last lines of %s:\n%s", e.name, e.err, log, tail)
}

func (s *supervisor) startEtcd(clientPort, peerPort int) error {
	cfg := embed.NewConfig()
	cfg.Name = "kube-env"
	cfg.Dir = filepath.Join(s.dir, "etcd")
	cu, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(clientPort))
	pu, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(peerPort))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(s.dir, "logs", "etcd.log")}
	// Test data is thrown away: durability is not worth the fsync latency.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	s.etcd = e
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcd: %w", err)
	case <-time.After(etcdStartTimeout):
		return fmt.Errorf("etcd not ready after %s", etcdStartTimeout)
	}
}

// apiServerReady says whether the API server answers /readyz with "ok".
func (s *supervisor) apiServerReady(ctx context.Context) (bool, error) {
	body, err := s.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	return err == nil && string(body) == "ok", nil
}

// startChild runs this binary again as the named component, logging to logs/NAME.log, in the
// network namespace ns (nil: this machine's).
func (s *supervisor) startChild(name string, ns *os.File, args ...string) error {
	c, err := s.spawnChild(name, ns, args)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.children = append(s.children, c)
	s.mu.Unlock()
	return nil
}

// spawnChild starts the component; its exit is reported on s.exited unless it was expected.
func (s *supervisor) spawnChild(name string, ns *os.File, args []string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	log, err := os.OpenFile(filepath.Join(s.dir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := selfCommand(self, append([]string{name}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	// If the supervisor is killed outright (SIGKILL), the kernel kills the components too,
	// so no orphaned apiserver outlives a crashed test run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := cmd.Start
	if ns != nil {
		start = func() error { return inNetns(ns, cmd.Start) }
	}
	if err := start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{}), ns: ns, args: args}
	go func() {
		err := cmd.Wait()
		log.Close()
		close(c.done)
		if !c.expected.Load() {
			s.exited <- childExit{name: name, err: err}
		}
	}()
	return c, nil
}

// stopChild stops a component: SIGTERM, then SIGKILL after `wait`.
func stopChild(c *child, wait time.Duration) {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(wait):
		logf("%s did not stop within %s; killing it", c.name, wait)
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// shutdown stops the pods (SIGKILL: the node goes away), then the components in reverse
// start order, then etcd, then the pod network. Each step is bounded.
func (s *supervisor) shutdown() {
	if s.cancel != nil {
		s.cancel()
	}
	if s.simDone != nil {
		<-s.simDone
	}
	if s.runtime != nil {
		s.runtime.shutdown()
	}
	// Held to the end: a restart under way finishes first, and none starts after.
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.children) - 1; i >= 0; i-- {
		s.children[i].expected.Store(true)
		stopChild(s.children[i], componentStopWait)
	}
	if s.etcd != nil {
		done := make(chan struct{})
		go func() { s.etcd.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(componentStopWait):
			logf("etcd did not stop within %s", componentStopWait)
		}
	}
	if s.net != nil {
		s.net.close()
	}
}

// freePorts asks the kernel for n distinct free loopback ports. They are released before the
// components bind them, which leaves a small race that is acceptable on a test machine.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
