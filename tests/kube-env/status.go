package main

// Pod status of real pods, computed as the kubelet computes it (generateAPIPodStatus, getPhase).

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// The conditions the kubelet owns; others (PodScheduled, DisruptionTarget, readiness gates)
// belong to other components and are kept as they are.
var kubeletConditions = []corev1.PodConditionType{
	corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady,
}

func (w *podWorker) containerStatus(c *ctr) corev1.ContainerStatus {
	st := corev1.ContainerStatus{
		Name:         c.spec.Name,
		Image:        c.spec.Image,
		RestartCount: c.restarts,
		Started:      ptr.To(false),
	}
	// As a kubelet reports it once the image is on the node (here: from the first run on).
	switch {
	case c.image != nil:
		st.ImageID = c.image.Name + "@" + c.image.Digest
	case c.runs > 0:
		st.ImageID = "kube-env://host-root"
	}
	if c.runs > 0 {
		st.ContainerID = c.containerID(w.uid)
	}
	if c.lastTerm != nil {
		st.LastTerminationState.Terminated = c.lastTerm
	}
	switch {
	case c.proc != nil:
		st.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.proc.started)}
		st.Started = ptr.To(c.isStarted())
		st.Ready = c.isReady()
	case c.term != nil:
		st.State.Terminated = c.term
		// As the kubelet: a finished init container counts as ready.
		st.Ready = c.init && c.term.ExitCode == 0
	default:
		reason := c.waitReason
		switch {
		case reason != "":
		case c.init || c.sidecar || (!w.initialized && len(w.inits) > 0):
			reason = "PodInitializing"
		default:
			reason = "ContainerCreating"
		}
		st.State.Waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: c.waitMessage}
	}
	return st
}

// phase is the kubelet's getPhase (without per-container restart rules).
func (w *podWorker) phase(podIsTerminal bool) corev1.PodPhase {
	spec := w.pod.Spec
	pendingInit, failedInit, pendingSidecars := 0, 0, 0
	for _, c := range w.inits {
		st := w.containerStatus(c)
		if c.sidecar {
			if st.State.Running == nil || !ptr.Deref(st.Started, false) {
				pendingSidecars++
			}
			continue
		}
		switch {
		case st.State.Running != nil:
			pendingInit++
		case st.State.Terminated != nil:
			if st.State.Terminated.ExitCode != 0 {
				failedInit++
			}
		case st.State.Waiting != nil && st.LastTerminationState.Terminated != nil:
			if st.LastTerminationState.Terminated.ExitCode != 0 {
				failedInit++
			}
		default:
			pendingInit++
		}
	}
	running, waiting, stopped, succeeded := 0, 0, 0, 0
	for _, c := range w.sidecars() {
		if c.proc != nil {
			running++
		}
	}
	for _, c := range w.mains {
		st := w.containerStatus(c)
		switch {
		case st.State.Running != nil:
			running++
		case st.State.Terminated != nil:
			stopped++
			if st.State.Terminated.ExitCode == 0 {
				succeeded++
			}
		case st.LastTerminationState.Terminated != nil:
			stopped++
		default:
			waiting++
		}
	}
	if failedInit > 0 && spec.RestartPolicy == corev1.RestartPolicyNever {
		return corev1.PodFailed
	}
	switch {
	case pendingInit > 0 || (pendingSidecars > 0 && !w.initialized), waiting > 0:
		if podIsTerminal {
			return corev1.PodFailed
		}
		return corev1.PodPending
	case running > 0:
		return corev1.PodRunning
	case stopped > 0:
		if podIsTerminal || spec.RestartPolicy == corev1.RestartPolicyNever ||
			(spec.RestartPolicy == corev1.RestartPolicyOnFailure && stopped == succeeded) {
			if stopped == succeeded {
				return corev1.PodSucceeded
			}
			return corev1.PodFailed
		}
		return corev1.PodRunning
	}
	if podIsTerminal {
		return corev1.PodFailed
	}
	return corev1.PodPending
}

func (w *podWorker) buildStatus() corev1.PodStatus {
	w.mu.Lock()
	terminating := w.removed || w.pod.DeletionTimestamp != nil
	w.mu.Unlock()
	// A deleted pod whose processes are all gone gets a terminal phase before the object is
	// removed (kubelet since 1.27), so Job controllers count it.
	finalizing := terminating && w.killing != nil && w.killing.finished()
	st := corev1.PodStatus{
		Phase:              w.phase(finalizing),
		StartTime:          ptr.To(w.startTime),
		QOSClass:           w.pod.Status.QOSClass,
		ObservedGeneration: w.pod.Generation,
	}
	if w.sb != nil {
		ip := w.sb.ip.String()
		st.PodIP, st.PodIPs = ip, []corev1.PodIP{{IP: ip}}
	}
	host := w.rt.net.gateway.String()
	st.HostIP, st.HostIPs = host, []corev1.HostIP{{IP: host}}
	if st.QOSClass == "" {
		st.QOSClass = qosClass(w.pod)
	}
	for _, c := range w.inits {
		st.InitContainerStatuses = append(st.InitContainerStatuses, w.containerStatus(c))
	}
	var unready []string
	for _, c := range w.mains {
		cs := w.containerStatus(c)
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		if !cs.Ready {
			unready = append(unready, c.spec.Name)
		}
	}
	for _, c := range w.sidecars() {
		if !c.isReady() {
			unready = append(unready, c.spec.Name)
		}
	}
	var incomplete []string
	for _, c := range w.inits {
		if (c.init && (c.term == nil || c.term.ExitCode != 0)) || (c.sidecar && !c.isStarted() && !w.initialized) {
			incomplete = append(incomplete, c.spec.Name)
		}
	}
	terminal := st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed
	sandboxReady := w.sb != nil && !w.sandboxGone
	w.setCondition(&st, corev1.PodReadyToStartContainers, sandboxReady, "", "")
	if w.initialized || len(incomplete) == 0 {
		reason := ""
		if terminal && len(w.inits) > 0 {
			reason = "PodCompleted"
		}
		w.setCondition(&st, corev1.PodInitialized, true, reason, "")
	} else {
		w.setCondition(&st, corev1.PodInitialized, false, "ContainersNotInitialized",
			fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(incomplete, " ")))
	}
	switch {
	case terminal:
		w.setCondition(&st, corev1.ContainersReady, false, "PodCompleted", "")
		w.setCondition(&st, corev1.PodReady, false, "PodCompleted", "")
	case len(unready) > 0:
		msg := fmt.Sprintf("containers with unready status: [%s]", strings.Join(unready, " "))
		w.setCondition(&st, corev1.ContainersReady, false, "ContainersNotReady", msg)
		w.setCondition(&st, corev1.PodReady, false, "ContainersNotReady", msg)
	default:
		w.setCondition(&st, corev1.ContainersReady, true, "", "")
		if gates := w.unreadyGates(); len(gates) > 0 {
			w.setCondition(&st, corev1.PodReady, false, "ReadinessGatesNotReady",
				fmt.Sprintf("corresponding condition of pod readiness gate %q does not exist.", gates[0]))
		} else {
			w.setCondition(&st, corev1.PodReady, true, "", "")
		}
	}
	return st
}

func (w *podWorker) unreadyGates() []string {
	var out []string
	for _, g := range w.pod.Spec.ReadinessGates {
		ok := false
		for _, c := range w.pod.Status.Conditions {
			if c.Type == g.ConditionType && c.Status == corev1.ConditionTrue {
				ok = true
			}
		}
		if !ok {
			out = append(out, string(g.ConditionType))
		}
	}
	return out
}

func (w *podWorker) setCondition(st *corev1.PodStatus, t corev1.PodConditionType, ok bool, reason, msg string) {
	status := corev1.ConditionFalse
	if ok {
		status = corev1.ConditionTrue
	}
	prev, seen := w.condTimes[t]
	if !seen || prev.status != status {
		prev = condTime{status: status, at: metav1.NewTime(time.Now().Truncate(time.Second))}
		w.condTimes[t] = prev
	}
	st.Conditions = append(st.Conditions, corev1.PodCondition{
		Type: t, Status: status, Reason: reason, Message: msg, LastTransitionTime: prev.at,
		ObservedGeneration: w.pod.Generation,
	})
}

// mergeStatus writes the kubelet-owned parts of computed into the stored status.
func mergeStatus(stored, computed *corev1.PodStatus) {
	owned := map[corev1.PodConditionType]bool{}
	for _, t := range kubeletConditions {
		owned[t] = true
	}
	conds := append([]corev1.PodCondition(nil), computed.Conditions...)
	for _, c := range stored.Conditions {
		if !owned[c.Type] {
			conds = append(conds, c)
		}
	}
	stored.Conditions = conds
	stored.Phase = computed.Phase
	stored.StartTime = computed.StartTime
	stored.HostIP, stored.HostIPs = computed.HostIP, computed.HostIPs
	if computed.PodIP != "" {
		stored.PodIP, stored.PodIPs = computed.PodIP, computed.PodIPs
	}
	stored.InitContainerStatuses = computed.InitContainerStatuses
	stored.ContainerStatuses = computed.ContainerStatuses
	stored.QOSClass = computed.QOSClass
	stored.ObservedGeneration = computed.ObservedGeneration
	stored.Reason, stored.Message = "", ""
}
