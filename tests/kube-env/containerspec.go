package main

// From a pod's container to a containerinit.Spec: command and arguments (with the image's
// entrypoint and cmd), environment (as the kubelet builds it), mounts, user and the files the
// kubelet manages (/etc/hosts, /etc/resolv.conf, /etc/hostname).

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/kubernetes/pkg/api/v1/resource"
	"k8s.io/kubernetes/pkg/fieldpath"
	"k8s.io/kubernetes/pkg/kubelet/envvars"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"

	"drainer.test/kube-env/containerinit"
)

const clusterDomain = "cluster.local"

func containerMount(source, target string, readOnly bool) containerinit.Mount {
	return containerinit.Mount{Source: source, Target: target, ReadOnly: readOnly}
}

func (w *podWorker) containerSpec(c *ctr) (*containerinit.Spec, error) {
	c.image = w.rt.images.lookup(c.spec.Image)
	env, err := w.makeEnv(c.spec)
	if err != nil {
		return nil, err
	}
	mapping := expansion.MappingFuncFor(envMap(env))
	var argv []string
	switch {
	case len(c.spec.Command) > 0:
		argv = append(argv, c.spec.Command...)
		argv = append(argv, c.spec.Args...)
	case c.image != nil:
		argv = append(argv, c.image.Config.Entrypoint...)
		if len(c.spec.Args) > 0 {
			argv = append(argv, c.spec.Args...)
		} else {
			argv = append(argv, c.image.Config.Cmd...)
		}
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("no command specified for container %q", c.spec.Name)
	}
	for i := range argv {
		// The image's own entrypoint and cmd are not expanded; the pod's command and args are.
		if len(c.spec.Command) > 0 || (c.image != nil && i >= len(c.image.Config.Entrypoint) && len(c.spec.Args) > 0) {
			argv[i] = expansion.Expand(argv[i], mapping)
		}
	}
	spec := &containerinit.Spec{
		Lower:      "/",
		HostRoot:   true,
		HostBinds:  w.rt.hostBinds,
		Hostname:   w.hostname(),
		Args:       argv,
		WorkingDir: c.spec.WorkingDir,
	}
	// The image's environment first, the container's overrides it (as containerd merges them).
	var final []string
	seen := map[string]bool{}
	if c.image != nil {
		spec.Lower, spec.HostRoot, spec.HostBinds = c.image.Rootfs, false, nil
		spec.User = c.image.Config.User
		if spec.WorkingDir == "" {
			spec.WorkingDir = c.image.Config.WorkingDir
		}
		override := envMap(env)
		for _, kv := range c.image.Config.Env {
			k, _, _ := strings.Cut(kv, "=")
			if _, ok := override[k]; !ok && !seen[k] {
				final = append(final, kv)
				seen[k] = true
			}
		}
	}
	for _, e := range env {
		if !seen[e.Name] {
			final = append(final, e.Name+"="+e.Value)
			seen[e.Name] = true
		}
	}
	if !seen["PATH"] {
		final = append(final, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	if !seen["HOSTNAME"] {
		final = append(final, "HOSTNAME="+spec.Hostname)
	}
	spec.Env = final

	if err := w.applySecurityContext(c, spec); err != nil {
		return nil, err
	}
	mounts, err := w.volumeMounts(c.spec, mapping)
	if err != nil {
		return nil, err
	}
	spec.Mounts = mounts
	return spec, nil
}

func envMap(env []corev1.EnvVar) map[string]string {
	m := make(map[string]string, len(env))
	for _, e := range env {
		m[e.Name] = e.Value
	}
	return m
}

// applySecurityContext applies the parts of securityContext kube-env honours: runAsUser,
// runAsGroup, runAsNonRoot, supplementalGroups, fsGroup (as a supplementary group; the
// volume's ownership is volumes_mount.go's), readOnlyRootFilesystem, allowPrivilegeEscalation,
// privileged and capabilities (as containerd computes them, see containerCapabilities).
// Seccomp, AppArmor and SELinux options are ignored.
func (w *podWorker) applySecurityContext(c *ctr, spec *containerinit.Spec) error {
	psc := w.pod.Spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	csc := c.spec.SecurityContext
	if csc == nil {
		csc = &corev1.SecurityContext{}
	}
	spec.RunAsUser, spec.RunAsGroup = psc.RunAsUser, psc.RunAsGroup
	if csc.RunAsUser != nil {
		spec.RunAsUser = csc.RunAsUser
	}
	if csc.RunAsGroup != nil {
		spec.RunAsGroup = csc.RunAsGroup
	}
	nonRoot := psc.RunAsNonRoot
	if csc.RunAsNonRoot != nil {
		nonRoot = csc.RunAsNonRoot
	}
	if nonRoot != nil && *nonRoot {
		switch user, _, _ := strings.Cut(spec.User, ":"); {
		case spec.RunAsUser != nil:
			if *spec.RunAsUser == 0 {
				return fmt.Errorf("container's runAsUser breaks non-root policy (pod: %q, container: %s)", w.pod.Name, c.spec.Name)
			}
		case user == "" || user == "0" || user == "root":
			return fmt.Errorf("container has runAsNonRoot and image will run as root (pod: %q, container: %s)", w.pod.Name, c.spec.Name)
		default:
			if _, err := strconv.Atoi(user); err != nil {
				return fmt.Errorf("container has runAsNonRoot and image has non-numeric user (%s), cannot verify user is non-root (pod: %q, container: %s)", user, w.pod.Name, c.spec.Name)
			}
		}
	}
	spec.SupplementalGroups = append(spec.SupplementalGroups, psc.SupplementalGroups...)
	if psc.FSGroup != nil {
		spec.SupplementalGroups = append(spec.SupplementalGroups, *psc.FSGroup)
	}
	spec.ReadOnlyRoot = csc.ReadOnlyRootFilesystem != nil && *csc.ReadOnlyRootFilesystem
	spec.NoNewPrivs = csc.AllowPrivilegeEscalation != nil && !*csc.AllowPrivilegeEscalation
	spec.AllCapabilities = csc.Privileged != nil && *csc.Privileged
	if !spec.AllCapabilities {
		caps, err := containerCapabilities(csc.Capabilities)
		if err != nil {
			return fmt.Errorf("container %s: %w", c.spec.Name, err)
		}
		spec.Capabilities = caps
	}
	return nil
}

// defaultCapabilities are containerd's default capabilities of a container (those of
// Docker): what a container gets without securityContext.capabilities.
var defaultCapabilities = []string{
	"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
}

// containerCapabilities computes a container's capabilities as containerd's CRI plugin does
// (WithCapabilities): the defaults; every capability if add has "ALL"; none if drop has
// "ALL"; then each added one, then each dropped one taken away. Names may carry "CAP_" and
// any case; an unknown one fails the container, as runc does.
func containerCapabilities(caps *corev1.Capabilities) ([]string, error) {
	if caps == nil {
		return defaultCapabilities, nil
	}
	set := map[string]bool{}
	for _, c := range defaultCapabilities {
		set[c] = true
	}
	norm := func(c corev1.Capability) string {
		return strings.TrimPrefix(strings.ToUpper(string(c)), "CAP_")
	}
	has := func(list []corev1.Capability, name string) bool {
		for _, c := range list {
			if norm(c) == name {
				return true
			}
		}
		return false
	}
	if has(caps.Add, "ALL") {
		for _, name := range containerinit.AllCapabilities() {
			set[name] = true
		}
	}
	if has(caps.Drop, "ALL") {
		set = map[string]bool{}
	}
	for _, c := range caps.Add {
		if name := norm(c); name != "ALL" {
			if !containerinit.CapabilityKnown(name) {
				return nil, fmt.Errorf("unknown capability %q to add", c)
			}
			set[name] = true
		}
	}
	for _, c := range caps.Drop {
		delete(set, norm(c))
	}
	out := []string{}
	for name := range set {
		out = append(out, name)
	}
	sort.Strings(out)
	return out, nil
}

// volumeMounts maps the container's volumeMounts to bind mounts, plus the kubelet's /etc files
// unless the container mounts something there itself.
func (w *podWorker) volumeMounts(c *corev1.Container, mapping func(string) string) ([]containerinit.Mount, error) {
	var out []containerinit.Mount
	targets := map[string]bool{}
	for _, vm := range c.VolumeMounts {
		v, ok := w.vols.paths[vm.Name]
		if !ok {
			return nil, fmt.Errorf("volume %q of mount %s is not a volume of the pod", vm.Name, vm.MountPath)
		}
		source := v.path
		sub := vm.SubPath
		if vm.SubPathExpr != "" {
			sub = expansion.Expand(vm.SubPathExpr, mapping)
		}
		if sub != "" {
			if filepath.IsAbs(sub) || strings.HasPrefix(filepath.Clean(sub), "..") {
				return nil, fmt.Errorf("subPath %q must be a relative path within the volume", sub)
			}
			p, err := resolveInRoot(v.path, sub)
			if err != nil {
				return nil, err
			}
			if _, err := os.Lstat(p); os.IsNotExist(err) {
				// The kubelet creates a missing subPath as a directory.
				if err := os.MkdirAll(p, 0o777); err != nil {
					return nil, err
				}
			}
			source = p
		}
		out = append(out, containerMount(source, vm.MountPath, vm.ReadOnly || v.readOnly))
		targets[filepath.Clean(vm.MountPath)] = true
	}
	for name, target := range map[string]string{"hosts": "/etc/hosts", "resolv.conf": "/etc/resolv.conf", "hostname": "/etc/hostname"} {
		if !targets[target] {
			out = append(out, containerMount(filepath.Join(w.dir, "etc", name), target, false))
		}
	}
	return out, nil
}

// hostname is the pod's hostname (spec.hostname or its name, at most 63 characters), or its
// FQDN with setHostnameAsFQDN.
func (w *podWorker) hostname() string {
	h := w.pod.Spec.Hostname
	if h == "" {
		h = w.pod.Name
	}
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-.")
	}
	if w.pod.Spec.SetHostnameAsFQDN != nil && *w.pod.Spec.SetHostnameAsFQDN && w.pod.Spec.Subdomain != "" {
		return w.fqdn(h)
	}
	return h
}

func (w *podWorker) fqdn(h string) string {
	return fmt.Sprintf("%s.%s.%s.svc.%s", h, w.pod.Spec.Subdomain, w.pod.Namespace, clusterDomain)
}

// writeEtcFiles writes the pod's /etc/hosts, /etc/resolv.conf and /etc/hostname as the kubelet
// does (dnsPolicy and dnsConfig honoured).
func (w *podWorker) writeEtcFiles(sb *sandbox) error {
	dir := filepath.Join(w.dir, "etc")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	spec := w.pod.Spec
	h := spec.Hostname
	if h == "" {
		h = w.pod.Name
	}
	var hosts strings.Builder
	hosts.WriteString("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" +
		"fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n")
	if spec.Subdomain != "" {
		fmt.Fprintf(&hosts, "%s\t%s\t%s\n", sb.ip, w.fqdn(h), h)
	} else {
		fmt.Fprintf(&hosts, "%s\t%s\n", sb.ip, h)
	}
	if len(spec.HostAliases) > 0 {
		hosts.WriteString("\n# Entries added by HostAliases.\n")
		for _, a := range spec.HostAliases {
			fmt.Fprintf(&hosts, "%s\t%s\n", a.IP, strings.Join(a.Hostnames, "\t"))
		}
	}
	var nameservers, searches, options []string
	cluster := []string{w.rt.net.dnsServiceIP().String()}
	clusterSearch := []string{w.pod.Namespace + ".svc." + clusterDomain, "svc." + clusterDomain, clusterDomain}
	policy := spec.DNSPolicy
	if policy == "" {
		policy = corev1.DNSClusterFirst
	}
	if policy == corev1.DNSClusterFirst && spec.HostNetwork {
		policy = corev1.DNSDefault
	}
	switch policy {
	case corev1.DNSClusterFirst, corev1.DNSClusterFirstWithHostNet:
		nameservers, searches, options = cluster, clusterSearch, []string{"ndots:5"}
	case corev1.DNSDefault:
		// This machine's resolvers are not reachable from the pod network; kube-env's DNS
		// server forwards to them.
		nameservers = []string{w.rt.net.hostIP.String()}
	}
	if cfg := spec.DNSConfig; cfg != nil {
		nameservers = append(nameservers, cfg.Nameservers...)
		searches = append(searches, cfg.Searches...)
		for _, o := range cfg.Options {
			if o.Value != nil {
				options = append(options, o.Name+":"+*o.Value)
			} else {
				options = append(options, o.Name)
			}
		}
	}
	var resolv strings.Builder
	if len(searches) > 0 {
		fmt.Fprintf(&resolv, "search %s\n", strings.Join(searches, " "))
	}
	for _, ns := range nameservers {
		fmt.Fprintf(&resolv, "nameserver %s\n", ns)
	}
	if len(options) > 0 {
		fmt.Fprintf(&resolv, "options %s\n", strings.Join(options, " "))
	}
	for name, content := range map[string]string{
		"hosts": hosts.String(), "resolv.conf": resolv.String(), "hostname": w.hostname() + "\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// makeEnv is the kubelet's makeEnvironmentVariables: envFrom, then env with $(VAR) references
// to earlier variables and service variables expanded, then the service variables (those of
// the pod's namespace with enableServiceLinks, and always the "kubernetes" Service's).
func (w *podWorker) makeEnv(c *corev1.Container) ([]corev1.EnvVar, error) {
	ctx := w.rt.ctx
	pod := w.pod
	services, err := w.rt.services.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	links := pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks
	byName := map[string]*corev1.Service{}
	for _, s := range services {
		if s.Spec.ClusterIP == "" || s.Spec.ClusterIP == corev1.ClusterIPNone {
			continue
		}
		if s.Namespace == metav1.NamespaceDefault && s.Name == "kubernetes" {
			if _, ok := byName[s.Name]; !ok {
				byName[s.Name] = s
			}
		} else if s.Namespace == pod.Namespace && links {
			byName[s.Name] = s
		}
	}
	var mapped []*corev1.Service
	for _, s := range byName {
		mapped = append(mapped, s)
	}
	sort.Slice(mapped, func(i, j int) bool { return mapped[i].Name < mapped[j].Name })
	serviceEnv := map[string]string{}
	for _, e := range envvars.FromServices(mapped) {
		serviceEnv[e.Name] = e.Value
	}

	var order []string
	tmp := map[string]string{}
	set := func(k, v string) {
		if _, ok := tmp[k]; !ok {
			order = append(order, k)
		}
		tmp[k] = v
	}
	configMaps := map[string]*corev1.ConfigMap{}
	secrets := map[string]*corev1.Secret{}
	getConfigMap := func(name string) (*corev1.ConfigMap, error) {
		if cm, ok := configMaps[name]; ok {
			return cm, nil
		}
		cm, err := w.rt.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			configMaps[name] = cm
		}
		return cm, err
	}
	getSecret := func(name string) (*corev1.Secret, error) {
		if s, ok := secrets[name]; ok {
			return s, nil
		}
		s, err := w.rt.client.CoreV1().Secrets(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			secrets[name] = s
		}
		return s, err
	}
	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, err := getConfigMap(from.ConfigMapRef.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && ptrTrue(from.ConfigMapRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("configmap %q not found", from.ConfigMapRef.Name)
			}
			for _, k := range sortedKeys(cm.Data) {
				set(from.Prefix+k, cm.Data[k])
			}
		case from.SecretRef != nil:
			s, err := getSecret(from.SecretRef.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && ptrTrue(from.SecretRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("secret %q not found", from.SecretRef.Name)
			}
			keys := make([]string, 0, len(s.Data))
			for k := range s.Data {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				set(from.Prefix+k, string(s.Data[k]))
			}
		}
	}
	mapping := expansion.MappingFuncFor(tmp, serviceEnv)
	for _, e := range c.Env {
		value := e.Value
		if value != "" {
			value = expansion.Expand(value, mapping)
		} else if from := e.ValueFrom; from != nil {
			switch {
			case from.FieldRef != nil:
				v, err := w.fieldValue(from.FieldRef.FieldPath)
				if err != nil {
					return nil, err
				}
				value = v
			case from.ResourceFieldRef != nil:
				v, err := w.resourceValue(from.ResourceFieldRef, c)
				if err != nil {
					return nil, err
				}
				value = v
			case from.ConfigMapKeyRef != nil:
				ref := from.ConfigMapKeyRef
				cm, err := getConfigMap(ref.Name)
				if err != nil {
					if apierrors.IsNotFound(err) && ptrTrue(ref.Optional) {
						continue
					}
					return nil, fmt.Errorf("configmap %q not found", ref.Name)
				}
				v, ok := cm.Data[ref.Key]
				if !ok {
					if ptrTrue(ref.Optional) {
						continue
					}
					return nil, fmt.Errorf("couldn't find key %v in ConfigMap %v/%v", ref.Key, pod.Namespace, ref.Name)
				}
				value = v
			case from.SecretKeyRef != nil:
				ref := from.SecretKeyRef
				s, err := getSecret(ref.Name)
				if err != nil {
					if apierrors.IsNotFound(err) && ptrTrue(ref.Optional) {
						continue
					}
					return nil, fmt.Errorf("secret %q not found", ref.Name)
				}
				v, ok := s.Data[ref.Key]
				if !ok {
					if ptrTrue(ref.Optional) {
						continue
					}
					return nil, fmt.Errorf("couldn't find key %v in Secret %v/%v", ref.Key, pod.Namespace, ref.Name)
				}
				value = string(v)
			}
		}
		set(e.Name, value)
	}
	var out []corev1.EnvVar
	for _, k := range order {
		out = append(out, corev1.EnvVar{Name: k, Value: tmp[k]})
	}
	for _, k := range sortedKeys(serviceEnv) {
		if _, ok := tmp[k]; !ok {
			out = append(out, corev1.EnvVar{Name: k, Value: serviceEnv[k]})
		}
	}
	return out, nil
}

func ptrTrue(b *bool) bool { return b != nil && *b }

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// fieldValue is the kubelet's podFieldSelectorRuntimeValue.
func (w *podWorker) fieldValue(path string) (string, error) {
	pod := w.pod
	podIP := ""
	if w.sb != nil {
		podIP = w.sb.ip.String()
	}
	switch path {
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.hostIPs":
		return w.rt.net.gateway.String(), nil
	case "status.podIP", "status.podIPs":
		return podIP, nil
	}
	return fieldpath.ExtractFieldPathAsString(pod, path)
}

// resourceValue resolves resourceFieldRef; limits that are not set are the node's allocatable,
// as with the kubelet.
func (w *podWorker) resourceValue(ref *corev1.ResourceFieldSelector, self *corev1.Container) (string, error) {
	c := self
	if ref.ContainerName != "" && ref.ContainerName != self.Name {
		c = nil
		for i := range w.pod.Spec.Containers {
			if w.pod.Spec.Containers[i].Name == ref.ContainerName {
				c = &w.pod.Spec.Containers[i]
			}
		}
		if c == nil {
			return "", fmt.Errorf("container %q not found in the pod", ref.ContainerName)
		}
	}
	defaulted := c.DeepCopy()
	if defaulted.Resources.Limits == nil {
		defaulted.Resources.Limits = corev1.ResourceList{}
	}
	for name, q := range w.rt.allocatable {
		if _, ok := defaulted.Resources.Limits[name]; !ok {
			defaulted.Resources.Limits[name] = q
		}
	}
	return resource.ExtractContainerResourceValue(ref, defaulted)
}
