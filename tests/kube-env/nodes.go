package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
)

// ExitCodeAnnotation asks the node simulator to end a pod's containers with this exit code once
// the pod is Running, as a kubelet does when the container process exits. "0" ends the pod
// Succeeded; anything else ends it Failed (restartPolicy is not simulated).
const ExitCodeAnnotation = "kube-env.drainer.io/exit-code"

// TerminationDelayAnnotation (a Go duration such as "5s") keeps a deleted pod Terminating for
// that long, as a container that takes time to exit on SIGTERM would; at most the pod's grace
// period. Without it, deleted pods go away at once.
const TerminationDelayAnnotation = "kube-env.drainer.io/termination-delay"

const (
	leaseDuration    = 40 * time.Second
	leaseRenewPeriod = 10 * time.Second
	// The node lifecycle controller also reads the Ready condition's heartbeat; refreshing it
	// well inside its grace period keeps nodes Ready without a real kubelet.
	statusPeriod = 30 * time.Second
)

// nodeSimulator plays the kubelet's part for a few Node objects: it registers them, keeps them
// Ready (lease and status heartbeats), runs the pods bound to them without a container runtime
// (status Running and Ready, pod IP, container statuses) and finishes pod deletion the way a
// kubelet does once containers have stopped (delete with grace period 0).
type nodeSimulator struct {
	client kubernetes.Interface
	nodes  []string
	// hostIP is the nodes' InternalIP and the pods' hostIP: the pod network's gateway when the
	// process runtime is on, else 127.0.0.1.
	hostIP string
	// runtime runs the pods that run for real (runtime.go); nil runs every pod simulated.
	runtime *podRuntime
	// kubeletPort is where the nodes serve pod logs (kubelet_api.go), 0 for nowhere.
	kubeletPort int32

	mu     sync.Mutex
	nextIP map[string]int
}

func (s *nodeSimulator) run(ctx context.Context) error {
	s.nextIP = map[string]int{}
	for _, n := range s.nodes {
		if err := s.registerNode(ctx, n); err != nil {
			return err
		}
	}
	go wait.UntilWithContext(ctx, s.renewLeases, leaseRenewPeriod)
	go wait.UntilWithContext(ctx, s.updateNodeStatuses, statusPeriod)

	factory := informers.NewSharedInformerFactoryWithOptions(s.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermNotEqualSelector("spec.nodeName", "").String()
		}))
	podInformer := factory.Core().V1().Pods()
	lister := podInformer.Lister()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer queue.ShutDown()
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(key)
		}
	}
	if _, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: func(obj any) {
			if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
				queue.Add(key)
			}
		},
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.Informer().HasSynced) {
		return ctx.Err()
	}

	ours := map[string]bool{}
	for _, n := range s.nodes {
		ours[n] = true
	}
	worker := func() {
		for {
			key, shutdown := queue.Get()
			if shutdown {
				return
			}
			func() {
				defer queue.Done(key)
				ns, name, _ := cache.SplitMetaNamespaceKey(key)
				pod, err := lister.Pods(ns).Get(name)
				if apierrors.IsNotFound(err) {
					if s.runtime != nil {
						s.runtime.podGone(ns, name, "")
					}
					queue.Forget(key)
					return
				}
				var later time.Duration
				if err == nil && ours[pod.Spec.NodeName] {
					if s.runtime != nil {
						// A pod of this name with another UID (a StatefulSet pod recreated) is gone.
						s.runtime.podGone(ns, name, pod.UID)
						if s.runtime.handles(pod) {
							s.runtime.update(pod)
							queue.Forget(key)
							return
						}
					}
					later, err = s.syncPod(ctx, pod)
				}
				if err != nil && !apierrors.IsNotFound(err) {
					// Includes conflicts: the cache was stale; retry with the newer object.
					queue.AddRateLimited(key)
					return
				}
				queue.Forget(key)
				if later > 0 {
					queue.AddAfter(key, later)
				}
			}()
		}
	}
	for i := 0; i < 4; i++ {
		go worker()
	}
	<-ctx.Done()
	return nil
}

func (s *nodeSimulator) registerNode(ctx context.Context, name string) error {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("16"),
		corev1.ResourceMemory:           resource.MustParse("64Gi"),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				"kubernetes.io/hostname":        name,
				"kubernetes.io/os":              "linux",
				"kubernetes.io/arch":            "amd64",
				"kube-env.drainer.io/simulated": "true",
			},
		},
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity,
			Addresses:   s.addresses(name),
			NodeInfo: corev1.NodeSystemInfo{
				KubeletVersion:          "v1.37.2-kube-env",
				ContainerRuntimeVersion: s.runtimeVersion(),
				OperatingSystem:         "linux",
				Architecture:            "amd64",
			},
		},
	}
	_, err := s.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("register node %s: %w", name, err)
	}
	return s.updateNodeStatus(ctx, name)
}

func (s *nodeSimulator) runtimeVersion() string {
	if s.runtime != nil {
		return "kube-env://processes"
	}
	return "kube-env://simulated"
}

func (s *nodeSimulator) addresses(name string) []corev1.NodeAddress {
	return []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: s.hostIP},
		{Type: corev1.NodeHostName, Address: name},
	}
}

func (s *nodeSimulator) updateNodeStatuses(ctx context.Context) {
	for _, n := range s.nodes {
		if err := s.updateNodeStatus(ctx, n); err != nil && ctx.Err() == nil {
			logf("node simulator: %v", err)
		}
	}
}

func (s *nodeSimulator) updateNodeStatus(ctx context.Context, name string) error {
	node, err := s.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, st corev1.ConditionStatus, reason string) corev1.NodeCondition {
		c := corev1.NodeCondition{Type: t, Status: st, Reason: reason, LastHeartbeatTime: now, LastTransitionTime: now}
		for _, old := range node.Status.Conditions {
			if old.Type == t && old.Status == st {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
		return c
	}
	node.Status.Addresses = s.addresses(name)
	node.Status.DaemonEndpoints.KubeletEndpoint.Port = s.kubeletPort
	node.Status.Conditions = []corev1.NodeCondition{
		cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady"),
		cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory"),
		cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure"),
		cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID"),
	}
	_, err = s.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

func (s *nodeSimulator) renewLeases(ctx context.Context) {
	for _, n := range s.nodes {
		leases := s.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
		now := metav1.NewMicroTime(time.Now())
		lease, err := leases.Get(ctx, n, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = leases.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: n},
				Spec: coordinationv1.LeaseSpec{
					HolderIdentity:       ptr.To(n),
					LeaseDurationSeconds: ptr.To(int32(leaseDuration / time.Second)),
					RenewTime:            &now,
				},
			}, metav1.CreateOptions{})
		} else if err == nil {
			lease.Spec.RenewTime = &now
			_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			logf("node simulator: renew lease %s: %v", n, err)
		}
	}
}

// syncPod moves one pod along the lifecycle a kubelet would give it. A positive duration asks
// for the pod to be synced again after that time.
func (s *nodeSimulator) syncPod(ctx context.Context, pod *corev1.Pod) (time.Duration, error) {
	pods := s.client.CoreV1().Pods(pod.Namespace)
	switch {
	case pod.DeletionTimestamp != nil:
		if wait := terminationDelay(pod); wait > 0 {
			return wait, nil
		}
		// The "containers" have stopped; the kubelet then removes the pod with grace 0.
		// Finalizers, if any, still hold the object until their controllers remove them.
		return 0, pods.Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: ptr.To(int64(0)),
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return 0, nil // terminal: whoever ended it (the test, or us) owns that status
	case pod.Status.Phase == "" || pod.Status.Phase == corev1.PodPending:
		_, err := pods.UpdateStatus(ctx, s.runningStatus(pod), metav1.UpdateOptions{})
		return 0, err
	case pod.Status.Phase == corev1.PodRunning:
		if v, ok := pod.Annotations[ExitCodeAnnotation]; ok {
			code, err := strconv.Atoi(v)
			if err != nil {
				logf("node simulator: pod %s/%s: bad %s %q", pod.Namespace, pod.Name, ExitCodeAnnotation, v)
				return 0, nil
			}
			_, err = pods.UpdateStatus(ctx, terminatedStatus(pod, int32(code)), metav1.UpdateOptions{})
			return 0, err
		}
	}
	return 0, nil
}

// terminationDelay is how much longer a deleted pod with TerminationDelayAnnotation stays
// Terminating. Like a kubelet, which kills containers when the grace period ends, it never waits
// past the grace period.
func terminationDelay(pod *corev1.Pod) time.Duration {
	v, ok := pod.Annotations[TerminationDelayAnnotation]
	if !ok {
		return 0
	}
	delay, err := time.ParseDuration(v)
	if err != nil {
		logf("node simulator: pod %s/%s: bad %s %q", pod.Namespace, pod.Name, TerminationDelayAnnotation, v)
		return 0
	}
	// The API server sets deletionTimestamp = time of the delete call + grace period, truncated
	// to the second: the delete happened within the second after deletionTimestamp - grace, so
	// count from the end of that second and never end the delay early.
	grace := time.Duration(ptr.Deref(pod.DeletionGracePeriodSeconds, 0)) * time.Second
	deleted := pod.DeletionTimestamp.Add(-grace + time.Second)
	end := deleted.Add(min(delay, grace))
	return time.Until(end)
}

func (s *nodeSimulator) podIP(node string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	idx := 0
	for i, n := range s.nodes {
		if n == node {
			idx = i
		}
	}
	c := s.nextIP[node]
	s.nextIP[node] = (c + 1) % (250 * 250)
	// Loopback addresses: nothing should ever send traffic to a simulated pod off this machine.
	return fmt.Sprintf("127.%d.%d.%d", 10+idx, c/250, c%250+1)
}

func setPodCondition(status *corev1.PodStatus, t corev1.PodConditionType, st corev1.ConditionStatus, reason string, now metav1.Time) {
	for i := range status.Conditions {
		if status.Conditions[i].Type == t {
			if status.Conditions[i].Status != st {
				status.Conditions[i].LastTransitionTime = now
			}
			status.Conditions[i].Status, status.Conditions[i].Reason = st, reason
			return
		}
	}
	status.Conditions = append(status.Conditions, corev1.PodCondition{Type: t, Status: st, Reason: reason, LastTransitionTime: now})
}

func (s *nodeSimulator) runningStatus(pod *corev1.Pod) *corev1.Pod {
	pod = pod.DeepCopy()
	now := metav1.Now()
	ip := s.podIP(pod.Spec.NodeName)
	st := &pod.Status
	st.Phase = corev1.PodRunning
	st.HostIP, st.HostIPs = s.hostIP, []corev1.HostIP{{IP: s.hostIP}}
	st.PodIP, st.PodIPs = ip, []corev1.PodIP{{IP: ip}}
	st.StartTime = &now
	st.QOSClass = qosClass(pod)
	for _, t := range []corev1.PodConditionType{corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		setPodCondition(st, t, corev1.ConditionTrue, "", now)
	}
	st.InitContainerStatuses = nil
	for _, c := range pod.Spec.InitContainers {
		st.InitContainerStatuses = append(st.InitContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: "kube-env://" + c.Image, ContainerID: containerID(pod, c.Name),
			Ready: true,
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now, ContainerID: containerID(pod, c.Name)}},
		})
	}
	st.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: "kube-env://" + c.Image, ContainerID: containerID(pod, c.Name),
			Ready: true, Started: ptr.To(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	return pod
}

func terminatedStatus(pod *corev1.Pod, code int32) *corev1.Pod {
	pod = pod.DeepCopy()
	now := metav1.Now()
	st := &pod.Status
	reason := "Completed"
	st.Phase = corev1.PodSucceeded
	if code != 0 {
		reason = "Error"
		st.Phase = corev1.PodFailed
	}
	for i := range st.ContainerStatuses {
		cs := &st.ContainerStatuses[i]
		started := now
		if cs.State.Running != nil {
			started = cs.State.Running.StartedAt
		}
		cs.Ready, cs.Started = false, ptr.To(false)
		cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: code, Reason: reason, StartedAt: started, FinishedAt: now, ContainerID: cs.ContainerID}}
	}
	setPodCondition(st, corev1.PodReady, corev1.ConditionFalse, "PodCompleted", now)
	setPodCondition(st, corev1.ContainersReady, corev1.ConditionFalse, "PodCompleted", now)
	setPodCondition(st, corev1.PodReadyToStartContainers, corev1.ConditionFalse, "", now)
	return pod
}

func containerID(pod *corev1.Pod, name string) string {
	return fmt.Sprintf("kube-env://%s/%s", pod.UID, name)
}

// qosClass is a simplified version of the kubelet's rule; the field is informational here.
func qosClass(pod *corev1.Pod) corev1.PodQOSClass {
	if pod.Status.QOSClass != "" {
		return pod.Status.QOSClass
	}
	for _, c := range pod.Spec.Containers {
		if len(c.Resources.Requests) > 0 || len(c.Resources.Limits) > 0 {
			return corev1.PodQOSBurstable
		}
	}
	return corev1.PodQOSBestEffort
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
