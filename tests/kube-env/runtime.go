package main

// The process runtime: the kubelet's pod lifecycle for pods that run for real.
//
// Which pods run for real: a pod whose containers (init containers included) all either have a
// `command` or use an image kube-env knows (see images.go). Anything else (an unknown image and
// no command: nothing to run) stays simulated as before (nodes.go), and so does a pod with the
// annotation kube-env.drainer.io/simulate: "true". The choice is made once per pod UID, when
// the pod is first seen bound to a node; every node can run both kinds.
//
// One worker goroutine per real pod, like the kubelet's pod workers: it prepares volumes, creates
// the sandbox (network namespace, IP), runs init containers in order and then the containers,
// restarts them according to restartPolicy with the kubelet's back-off (10 s doubling to 5 min,
// the first restart immediate), runs probes and hooks, reports status (phase, conditions,
// containerStatuses) and on deletion runs preStop hooks, sends the stop signal, SIGKILLs after
// the grace period and removes the pod object (grace 0) only once every process is gone.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"
)

// SimulateAnnotation keeps a pod simulated even if it could run for real.
const SimulateAnnotation = "kube-env.drainer.io/simulate"

const (
	volumeRefreshPeriod = 30 * time.Second
	setupRetry          = 2 * time.Second
	backoffInitial      = 10 * time.Second
	backoffMax          = 300 * time.Second
)

type podRuntime struct {
	ctx         context.Context
	client      kubernetes.Interface
	dataDir     string
	net         *network
	images      *imageStore
	recorder    func(node string) record.EventRecorder
	services    corelisters.ServiceLister
	self        string
	hostBinds   []string
	allocatable corev1.ResourceList

	mu         sync.Mutex
	workers    map[types.UID]*podWorker
	decided    map[types.UID]decision
	tombstones map[types.UID]string // pods whose worker finished, by key
	stopping   bool
	wg         sync.WaitGroup
}

type decision struct {
	key  string
	real bool
}

func newPodRuntime(ctx context.Context, client kubernetes.Interface, dataDir string, n *network, images *imageStore,
	recorder func(string) record.EventRecorder, services corelisters.ServiceLister, allocatable corev1.ResourceList) (*podRuntime, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	// Pods of an earlier run on this data directory have no processes left (they died with
	// their supervisor); their directories go too, as a node's would after a reboot.
	if err := os.RemoveAll(filepath.Join(dataDir, "pods")); err != nil {
		return nil, err
	}
	return &podRuntime{
		ctx: ctx, client: client, dataDir: dataDir, net: n, images: images, recorder: recorder,
		services: services, self: self, allocatable: allocatable,
		hostBinds:  hostMounts(dataDir),
		workers:    map[types.UID]*podWorker{},
		decided:    map[types.UID]decision{},
		tombstones: map[types.UID]string{},
	}, nil
}

// handles reports whether the pod runs for real; decided once per pod UID.
func (rt *podRuntime) handles(pod *corev1.Pod) bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if d, ok := rt.decided[pod.UID]; ok {
		return d.real
	}
	real := rt.runsForReal(pod)
	rt.decided[pod.UID] = decision{key: pod.Namespace + "/" + pod.Name, real: real}
	return real
}

func (rt *podRuntime) runsForReal(pod *corev1.Pod) bool {
	if pod.Annotations[SimulateAnnotation] == "true" {
		return false
	}
	all := append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...)
	if len(all) == 0 {
		return false
	}
	for _, c := range all {
		if len(c.Command) == 0 && rt.images.lookup(c.Image) == nil {
			return false
		}
	}
	return true
}

// update hands the latest version of a real pod to its worker, starting one if needed.
func (rt *podRuntime) update(pod *corev1.Pod) {
	rt.mu.Lock()
	w := rt.workers[pod.UID]
	if w == nil {
		if _, finished := rt.tombstones[pod.UID]; finished || rt.stopping {
			rt.mu.Unlock()
			return
		}
		w = newPodWorker(rt, pod)
		rt.workers[pod.UID] = w
		rt.wg.Add(1)
		go w.run()
	}
	rt.mu.Unlock()
	w.setPod(pod)
}

// podGone tells the runtime that the pod ns/name no longer exists with any UID but keep (""
// when the name is gone altogether): its worker kills what is left without waiting.
func (rt *podRuntime) podGone(ns, name string, keep types.UID) {
	key := ns + "/" + name
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for uid, w := range rt.workers {
		if w.key == key && uid != keep {
			w.markRemoved()
		}
	}
	for uid, d := range rt.decided {
		if d.key == key && uid != keep {
			if _, running := rt.workers[uid]; !running {
				delete(rt.decided, uid)
			}
		}
	}
	for uid, k := range rt.tombstones {
		if k == key && uid != keep {
			delete(rt.tombstones, uid)
		}
	}
}

func (rt *podRuntime) workerDone(w *podWorker) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	delete(rt.workers, w.uid)
	rt.tombstones[w.uid] = w.key
}

// shutdown kills every container at once (the node goes away) and waits for them.
func (rt *podRuntime) shutdown() {
	rt.mu.Lock()
	rt.stopping = true
	for _, w := range rt.workers {
		w.poke()
	}
	rt.mu.Unlock()
	rt.wg.Wait()
}

// ctr is one container of a pod, across its runs.
type ctr struct {
	spec     *corev1.Container
	init     bool // a regular init container: runs to completion before the next
	sidecar  bool // an init container with restartPolicy Always
	restarts int32
	runs     int
	proc     *proc                            // the current run, until reaped
	term     *corev1.ContainerStateTerminated // how the last run ended, if it is not restarted
	lastTerm *corev1.ContainerStateTerminated // the run before the current one
	image    *image

	waitReason, waitMessage string
	backoff                 time.Duration
	retryAt                 time.Time
	probes                  *prober
	stopping                bool // a stop of the current run was started (sidecars of a finished pod)
}

func (c *ctr) containerID(uid types.UID) string {
	return fmt.Sprintf("kube-env://%s/%s/%d", uid, c.spec.Name, c.runs)
}

type podWorker struct {
	rt     *podRuntime
	uid    types.UID
	key    string
	dir    string // DATA/pods/UID: volumes, /etc files, container runs
	logDir string // DATA/logs/pods/NS_NAME_UID/CONTAINER/RESTARTS.log (kept until kube-env stops)

	mu      sync.Mutex
	latest  *corev1.Pod
	removed bool
	wake    chan struct{}

	// Owned by the worker goroutine.
	pod          *corev1.Pod
	startTime    metav1.Time
	vols         *podVolumes
	nextRefresh  time.Time
	sb           *sandbox
	sandboxGone  bool
	inits, mains []*ctr
	initialized  bool
	terminal     bool
	killing      *killRun
	condTimes    map[corev1.PodConditionType]condTime
	lastPushed   *corev1.PodStatus
	lastMountEvt time.Time
}

type condTime struct {
	status corev1.ConditionStatus
	at     metav1.Time
}

type killRun struct {
	done      chan struct{}
	force     chan struct{}
	forceOnce sync.Once
}

func (k *killRun) finished() bool {
	select {
	case <-k.done:
		return true
	default:
		return false
	}
}

func (k *killRun) forceNow() { k.forceOnce.Do(func() { close(k.force) }) }

func newPodWorker(rt *podRuntime, pod *corev1.Pod) *podWorker {
	w := &podWorker{
		rt: rt, uid: pod.UID, key: pod.Namespace + "/" + pod.Name,
		dir:       filepath.Join(rt.dataDir, "pods", string(pod.UID)),
		logDir:    filepath.Join(rt.dataDir, "logs", "pods", fmt.Sprintf("%s_%s_%s", pod.Namespace, pod.Name, pod.UID)),
		wake:      make(chan struct{}, 1),
		pod:       pod,
		condTimes: map[corev1.PodConditionType]condTime{},
	}
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		sidecar := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		w.inits = append(w.inits, &ctr{spec: c, init: !sidecar, sidecar: sidecar})
	}
	for i := range pod.Spec.Containers {
		w.mains = append(w.mains, &ctr{spec: &pod.Spec.Containers[i]})
	}
	return w
}

func (w *podWorker) all() []*ctr { return append(append([]*ctr(nil), w.inits...), w.mains...) }

func (w *podWorker) setPod(pod *corev1.Pod) {
	w.mu.Lock()
	w.latest = pod
	w.mu.Unlock()
	w.poke()
}

func (w *podWorker) markRemoved() {
	w.mu.Lock()
	w.removed = true
	w.mu.Unlock()
	w.poke()
}

func (w *podWorker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// currentPod is the pod as the worker last saw it, for the worker's helper goroutines (probes,
// hooks, stops); the worker goroutine itself uses w.pod.
func (w *podWorker) currentPod() *corev1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod
}

func (w *podWorker) event(eventType, reason, format string, args ...any) {
	pod := w.currentPod()
	w.rt.recorder(pod.Spec.NodeName).Eventf(pod, eventType, reason, format, args...)
}

func (w *podWorker) run() {
	defer w.rt.wg.Done()
	defer w.rt.workerDone(w)
	w.recover()
	for {
		done, after := w.sync()
		if done {
			return
		}
		var timer *time.Timer
		var fire <-chan time.Time
		if after > 0 {
			timer = time.NewTimer(after)
			fire = timer.C
		}
		stopping := func() bool { w.rt.mu.Lock(); defer w.rt.mu.Unlock(); return w.rt.stopping }
		if stopping() {
			w.shutdown()
			return
		}
		select {
		case <-w.wake:
		case <-fire:
		case <-w.rt.ctx.Done():
		}
		if timer != nil {
			timer.Stop()
		}
		if w.rt.ctx.Err() != nil || stopping() {
			w.shutdown()
			return
		}
	}
}

// recover handles a pod that an earlier kube-env on this data directory had started: its
// processes died with that supervisor, as on a node that rebooted. Containers that may restart
// are started again (restartCount + 1); with restartPolicy Never the pod fails.
func (w *podWorker) recover() {
	st := w.pod.Status
	if st.StartTime == nil || st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed {
		return
	}
	w.startTime = *st.StartTime
	prev := map[string]corev1.ContainerStatus{}
	for _, s := range append(append([]corev1.ContainerStatus(nil), st.InitContainerStatuses...), st.ContainerStatuses...) {
		prev[s.Name] = s
	}
	for _, c := range w.all() {
		s, ok := prev[c.spec.Name]
		if !ok || (s.State.Running == nil && s.State.Terminated == nil) {
			continue
		}
		c.restarts, c.runs = s.RestartCount, 1
		term := s.State.Terminated.DeepCopy()
		if term == nil {
			term = &corev1.ContainerStateTerminated{
				ExitCode: 137, Reason: "ContainerStatusUnknown", StartedAt: s.State.Running.StartedAt,
				FinishedAt: metav1.Now(), Message: "The container could not be located when the pod was terminated",
			}
		}
		// As if the run had just ended: restarted, or not, by the pod's restartPolicy.
		w.ended(c, term, time.Now(), 0)
	}
}

// sync moves the pod one step. It returns true when the worker is finished, and otherwise
// when it wants to run again at the latest.
func (w *podWorker) sync() (bool, time.Duration) {
	w.mu.Lock()
	if w.latest != nil {
		w.pod = w.latest
	}
	removed := w.removed
	w.mu.Unlock()
	now := time.Now()
	if w.startTime.IsZero() {
		w.startTime = metav1.NewTime(now)
	}
	w.reapAll(now)

	if removed || w.pod.DeletionTimestamp != nil {
		return w.syncTerminating(removed)
	}
	if w.terminal {
		return false, w.finishTerminal()
	}
	if w.vols == nil {
		vols, err := w.setupVolumes(w.rt.ctx)
		if err != nil {
			if time.Since(w.lastMountEvt) > 10*time.Second {
				w.event(corev1.EventTypeWarning, "FailedMount", "%v", err)
				w.lastMountEvt = time.Now()
			}
			for _, c := range w.all() {
				c.waitReason, c.waitMessage = "", ""
			}
			return false, min(setupRetry, w.pushStatusRetry())
		}
		w.vols = vols
		w.nextRefresh = now.Add(volumeRefreshPeriod)
	} else if now.After(w.nextRefresh) {
		if err := w.vols.refresh(w.rt.ctx, w); err != nil {
			logf("runtime: pod %s: refresh volumes: %v", w.key, err)
		}
		w.nextRefresh = now.Add(volumeRefreshPeriod)
	}
	if w.sb == nil {
		sb, err := w.rt.net.newSandbox(string(w.uid), w.pod.Spec.HostNetwork)
		if err == nil {
			err = w.writeEtcFiles(sb)
			if err != nil {
				w.rt.net.teardown(sb)
			}
		}
		if err != nil {
			w.event(corev1.EventTypeWarning, "FailedCreatePodSandBox", "Failed to create pod sandbox: %v", err)
			return false, min(setupRetry, w.pushStatusRetry())
		}
		w.sb = sb
	}
	next := w.runContainers(now)
	if phase := w.phase(false); phase == corev1.PodSucceeded || phase == corev1.PodFailed {
		w.terminal = true
		next = w.finishTerminal()
	}
	next = min(next, time.Until(w.nextRefresh), w.pushStatusRetry())
	return false, max(next, 10*time.Millisecond)
}

// pushStatusRetry pushes the status and says when to try again if that failed.
func (w *podWorker) pushStatusRetry() time.Duration {
	if w.pushStatus() {
		return volumeRefreshPeriod
	}
	return time.Second
}

// reapAll collects the runs that ended and decides on restarts.
func (w *podWorker) reapAll(now time.Time) {
	for _, c := range w.all() {
		if c.proc == nil || !c.proc.exited() {
			continue
		}
		p := c.proc
		c.stopProbes()
		msg := readTerminationMessage(c.spec, p, w.logPath(c))
		c.proc = nil
		w.ended(c, p.termination(c.containerID(w.uid), msg), now, p.finished.Sub(p.started))
	}
}

// ended records how a run ended and schedules a restart if the policy asks for one.
func (w *podWorker) ended(c *ctr, term *corev1.ContainerStateTerminated, now time.Time, ran time.Duration) {
	c.term = term
	w.mu.Lock()
	removed := w.removed
	w.mu.Unlock()
	if removed || w.pod.DeletionTimestamp != nil || w.terminal || !w.shouldRestart(c, term.ExitCode) ||
		(c.sidecar && w.mainsDone()) {
		return
	}
	c.lastTerm, c.term = term, nil
	if ran > 2*backoffMax {
		c.backoff = 0
	}
	if c.backoff == 0 {
		c.retryAt, c.backoff = now, backoffInitial
		return
	}
	c.retryAt = now.Add(c.backoff)
	c.waitReason = "CrashLoopBackOff"
	c.waitMessage = fmt.Sprintf("back-off %s restarting failed container=%s pod=%s_%s(%s)",
		c.backoff, c.spec.Name, w.pod.Name, w.pod.Namespace, w.uid)
	w.event(corev1.EventTypeWarning, "BackOff", "Back-off restarting failed container %s in pod %s_%s(%s)",
		c.spec.Name, w.pod.Name, w.pod.Namespace, w.uid)
	c.backoff = min(2*c.backoff, backoffMax)
}

func (w *podWorker) shouldRestart(c *ctr, exitCode int32) bool {
	switch {
	case c.sidecar:
		return true
	case c.init:
		return exitCode != 0 && w.pod.Spec.RestartPolicy != corev1.RestartPolicyNever
	}
	switch w.pod.Spec.RestartPolicy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return exitCode != 0
	}
	return true
}

// runContainers starts what should run now: init containers one at a time in order (sidecars
// stay running), then all containers. It returns when it wants to look again.
func (w *podWorker) runContainers(now time.Time) time.Duration {
	next := volumeRefreshPeriod
	later := func(at time.Time) {
		if d := time.Until(at); d < next {
			next = max(d, 10*time.Millisecond)
		}
	}
	if !w.initialized {
		for _, c := range w.inits {
			if c.sidecar {
				if c.proc == nil && c.term == nil {
					if now.Before(c.retryAt) {
						later(c.retryAt)
						return next
					}
					w.start(c)
				}
				if c.proc == nil || !c.isStarted() {
					if !c.retryAt.IsZero() && now.Before(c.retryAt) {
						later(c.retryAt)
					}
					return next
				}
				continue
			}
			if c.term != nil && c.term.ExitCode == 0 {
				continue
			}
			if c.proc != nil || c.term != nil {
				return next // running, or failed for good (the pod fails)
			}
			if now.Before(c.retryAt) {
				later(c.retryAt)
				return next
			}
			w.start(c)
			if c.proc == nil && c.term == nil {
				later(c.retryAt)
			}
			return next
		}
		w.initialized = true
	}
	if w.mainsDone() {
		for _, c := range w.sidecars() {
			if c.proc != nil && !c.stopping {
				c.stopping = true
				c, p := c, c.proc
				go func() {
					w.stopContainer(c, p, w.gracePeriod(false), true, nil)
					w.poke()
				}()
			}
		}
		return next
	}
	for _, c := range append(w.sidecars(), w.mains...) {
		if c.proc != nil || c.term != nil {
			continue
		}
		if now.Before(c.retryAt) {
			later(c.retryAt)
			continue
		}
		w.start(c)
		if c.proc == nil && c.term == nil {
			later(c.retryAt)
		}
	}
	return next
}

// mainsDone reports that every container has ended for good (not with restartPolicy Always):
// the kubelet then stops the sidecars, and the pod can complete.
func (w *podWorker) mainsDone() bool {
	if w.pod.Spec.RestartPolicy == corev1.RestartPolicyAlways || len(w.mains) == 0 {
		return false
	}
	for _, c := range w.mains {
		if c.term == nil {
			return false
		}
	}
	return true
}

func (w *podWorker) sidecars() []*ctr {
	var out []*ctr
	for _, c := range w.inits {
		if c.sidecar {
			out = append(out, c)
		}
	}
	return out
}

func (c *ctr) isStarted() bool {
	return c.proc != nil && c.proc.postStarted.Load() && (c.probes == nil || c.probes.started.Load())
}

func (c *ctr) isReady() bool {
	return c.isStarted() && (c.probes == nil || c.probes.ready.Load())
}

func (c *ctr) stopProbes() {
	if c.probes != nil {
		c.probes.stop()
		c.probes = nil
	}
}

// start begins a new run of c. Configuration errors (a missing Secret, runAsNonRoot) leave it
// waiting with CreateContainerConfigError and are retried; failures of the container init
// (no such executable) end the run with exit code 128, reason StartError, as with containerd.
func (w *podWorker) start(c *ctr) {
	now := time.Now()
	spec, err := w.containerSpec(c)
	if err != nil {
		if c.waitMessage != err.Error() {
			w.event(corev1.EventTypeWarning, "Failed", "Error: %v", err)
		}
		c.waitReason, c.waitMessage = "CreateContainerConfigError", err.Error()
		c.retryAt = now.Add(setupRetry)
		return
	}
	if c.runs > 0 {
		c.restarts++
	}
	c.runs++
	c.term, c.waitReason, c.waitMessage, c.stopping = nil, "", "", false
	dir := filepath.Join(w.dir, "containers", fmt.Sprintf("%s-%d", c.spec.Name, c.runs))
	spec.Root, spec.Scratch = filepath.Join(dir, "root"), filepath.Join(dir, "scratch")
	termLog := filepath.Join(dir, "termination-log")
	err = errors.Join(os.MkdirAll(spec.Root, 0o755), os.MkdirAll(spec.Scratch, 0o755), os.WriteFile(termLog, nil, 0o666), os.Chmod(termLog, 0o666))
	if err != nil {
		c.waitReason, c.waitMessage = "CreateContainerError", err.Error()
		c.retryAt = now.Add(setupRetry)
		return
	}
	msgPath := c.spec.TerminationMessagePath
	if msgPath == "" {
		msgPath = corev1.TerminationMessagePathDefault
	}
	spec.Mounts = append(spec.Mounts, containerMount(termLog, msgPath, false))
	if c.image != nil {
		w.event(corev1.EventTypeNormal, "Pulled", "Container image %q already present on machine", c.spec.Image)
	} else {
		w.event(corev1.EventTypeNormal, "Pulled", "Container image %q is not known to kube-env: the container runs on this machine's root filesystem", c.spec.Image)
	}
	w.event(corev1.EventTypeNormal, "Created", "Created container: %s", c.spec.Name)
	p, err := startProcess(w.rt.self, w.sb.ns, dir, spec, w.logPath(c))
	var startErr *containerStartError
	switch {
	case errors.As(err, &startErr):
		w.event(corev1.EventTypeWarning, "Failed", "Error: failed to start container %q: %s", c.spec.Name, startErr.msg)
		w.ended(c, &corev1.ContainerStateTerminated{
			ExitCode: 128, Reason: "StartError", Message: startErr.msg,
			StartedAt: metav1.NewTime(time.Unix(0, 0)), FinishedAt: metav1.NewTime(p.finished),
			ContainerID: c.containerID(w.uid),
		}, time.Now(), 0)
		return
	case err != nil:
		w.event(corev1.EventTypeWarning, "Failed", "Error: %v", err)
		c.waitReason, c.waitMessage = "CreateContainerError", err.Error()
		c.retryAt = now.Add(setupRetry)
		return
	}
	p.env, p.stopSig = spec.Env, w.stopSignal(c)
	c.proc = p
	w.event(corev1.EventTypeNormal, "Started", "Started container %s", c.spec.Name)
	go func() {
		<-p.done
		w.poke()
	}()
	hasPostStart := c.spec.Lifecycle != nil && c.spec.Lifecycle.PostStart != nil
	p.postStarted.Store(!hasPostStart)
	if hasPostStart {
		go w.runPostStart(c, p)
	}
	c.probes = w.startProbes(c, p)
}

// runPostStart runs the postStart hook; the container counts as started only after it, and
// is killed if it fails, as with the kubelet.
func (w *podWorker) runPostStart(c *ctr, p *proc) {
	err := w.runHook(c, p, c.spec.Lifecycle.PostStart, time.Now().Add(w.gracePeriod(false)))
	if err != nil {
		w.event(corev1.EventTypeWarning, "FailedPostStartHook", "PostStartHook failed: %v", err)
		p.stop(w.gracePeriod(false), nil, p.stopSig, nil)
		return
	}
	p.postStarted.Store(true)
	w.poke()
}

func (w *podWorker) logPath(c *ctr) string {
	return filepath.Join(w.logDir, c.spec.Name, fmt.Sprintf("%d.log", c.restarts))
}

// gracePeriod is the time a stop may take: the deletion's grace period, else the pod's.
func (w *podWorker) gracePeriod(removed bool) time.Duration {
	if removed {
		return 0
	}
	pod := w.currentPod()
	if g := pod.DeletionGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return time.Duration(ptr.Deref(pod.Spec.TerminationGracePeriodSeconds, corev1.DefaultTerminationGracePeriodSeconds)) * time.Second
}

func (w *podWorker) stopSignal(c *ctr) syscall.Signal {
	if c.spec.Lifecycle != nil && c.spec.Lifecycle.StopSignal != nil {
		if s, ok := signalByName[string(*c.spec.Lifecycle.StopSignal)]; ok {
			return s
		}
	}
	if c.image != nil && c.image.Config.StopSignal != "" {
		name := c.image.Config.StopSignal
		if s, ok := signalByName[name]; ok {
			return s
		}
		if s, ok := signalByName["SIG"+name]; ok {
			return s
		}
	}
	return syscall.SIGTERM
}

var signalByName = map[string]syscall.Signal{
	"SIGTERM": syscall.SIGTERM, "SIGINT": syscall.SIGINT, "SIGQUIT": syscall.SIGQUIT, "SIGKILL": syscall.SIGKILL,
	"SIGHUP": syscall.SIGHUP, "SIGUSR1": syscall.SIGUSR1, "SIGUSR2": syscall.SIGUSR2, "SIGWINCH": syscall.SIGWINCH,
	"SIGSTOP": syscall.SIGSTOP, "SIGABRT": syscall.SIGABRT, "SIGPWR": syscall.SIGPWR,
}

// stopContainer stops one run (preStop, stop signal, SIGKILL after grace) in the background.
func (w *podWorker) stopContainer(c *ctr, p *proc, grace time.Duration, withPreStop bool, force <-chan struct{}) {
	var preStop func(time.Time)
	if withPreStop && c.spec.Lifecycle != nil && c.spec.Lifecycle.PreStop != nil {
		hook := c.spec.Lifecycle.PreStop
		preStop = func(deadline time.Time) {
			if err := w.runHook(c, p, hook, deadline); err != nil {
				w.event(corev1.EventTypeWarning, "FailedPreStopHook", "PreStopHook failed: %v", err)
			}
		}
	}
	p.stop(grace, preStop, p.stopSig, force)
}

// syncTerminating stops every container, then tears the pod down and removes the object.
func (w *podWorker) syncTerminating(removed bool) (bool, time.Duration) {
	if w.killing == nil {
		k := &killRun{done: make(chan struct{}), force: make(chan struct{})}
		w.killing = k
		grace := w.gracePeriod(removed)
		var wg sync.WaitGroup
		for _, c := range w.all() {
			if c.proc == nil {
				continue
			}
			c, p := c, c.proc
			w.event(corev1.EventTypeNormal, "Killing", "Stopping container %s", c.spec.Name)
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.stopContainer(c, p, grace, !removed, k.force)
			}()
		}
		go func() {
			wg.Wait()
			close(k.done)
			w.poke()
		}()
		if removed {
			k.forceNow()
		}
	} else if removed {
		w.killing.forceNow()
	}
	if !w.killing.finished() {
		// A later delete may have shortened the grace period: its deadline is the new one.
		if dt := w.pod.DeletionTimestamp; dt != nil {
			// Plus the 2 s the kubelet allows after a preStop hook that used the whole period.
			if until := time.Until(dt.Time.Add(minGracePeriod)); until <= 0 {
				w.killing.forceNow()
			} else {
				return false, until
			}
		}
		return false, 0
	}
	w.reapAll(time.Now())
	w.teardown()
	if !removed {
		w.pushStatus()
		err := w.rt.client.CoreV1().Pods(w.pod.Namespace).Delete(w.rt.ctx, w.pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: ptr.To(int64(0)),
			Preconditions:      &metav1.Preconditions{UID: &w.uid},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			logf("runtime: delete pod %s: %v (retrying)", w.key, err)
			return false, time.Second
		}
	}
	_ = os.RemoveAll(w.dir)
	return true, 0
}

// finishTerminal stops what still runs in a pod that reached Succeeded or Failed (sidecars),
// then tears down its sandbox; the object stays until someone deletes it.
func (w *podWorker) finishTerminal() time.Duration {
	if w.killing == nil {
		k := &killRun{done: make(chan struct{}), force: make(chan struct{})}
		w.killing = k
		var wg sync.WaitGroup
		for _, c := range w.all() {
			if c.proc != nil {
				c, p := c, c.proc
				wg.Add(1)
				go func() {
					defer wg.Done()
					w.stopContainer(c, p, w.gracePeriod(false), true, k.force)
				}()
			}
		}
		go func() {
			wg.Wait()
			close(k.done)
			w.poke()
		}()
	}
	if w.killing.finished() && !w.sandboxGone {
		w.reapAll(time.Now())
		w.teardown()
	}
	return w.pushStatusRetry()
}

// teardown releases the sandbox once no process is left (once: the IP may be given out again).
func (w *podWorker) teardown() {
	for _, c := range w.all() {
		c.stopProbes()
	}
	if w.sb != nil && !w.sandboxGone {
		w.rt.net.teardown(w.sb)
	}
	w.sandboxGone = true
}

// shutdown is the node going away: every process is killed at once, nothing is reported.
func (w *podWorker) shutdown() {
	for _, c := range w.all() {
		c.stopProbes()
		if c.proc != nil {
			c.proc.kill(syscall.SIGKILL)
			<-c.proc.done
		}
	}
	w.teardown()
	_ = os.RemoveAll(w.dir)
}

func (w *podWorker) pushStatus() bool {
	status := w.buildStatus()
	if w.lastPushed != nil && apiequality.Semantic.DeepEqual(*w.lastPushed, status) {
		return true
	}
	pods := w.rt.client.CoreV1().Pods(w.pod.Namespace)
	for attempt := 0; attempt < 5; attempt++ {
		cur, err := pods.Get(w.rt.ctx, w.pod.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || (err == nil && cur.UID != w.uid) {
			return true
		}
		if err != nil {
			logf("runtime: pod %s: get for status: %v", w.key, err)
			return false
		}
		next := cur.DeepCopy()
		mergeStatus(&next.Status, &status)
		_, err = pods.UpdateStatus(w.rt.ctx, next, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if apierrors.IsNotFound(err) {
			return true
		}
		if err != nil {
			logf("runtime: pod %s: update status: %v", w.key, err)
			return false
		}
		w.lastPushed = &status
		return true
	}
	return false
}
