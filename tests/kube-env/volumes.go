package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
)

const (
	storageClassName = "standard"
	provisionerName  = "kube-env.drainer.io/hostpath"
	// Annotations the kube-controller-manager's PV binder uses to hand a claim to an external
	// provisioner, and that such a provisioner sets on the volumes it creates.
	annStorageProvisioner = "volume.kubernetes.io/storage-provisioner"
	annProvisionedBy      = "pv.kubernetes.io/provisioned-by"
	// PathAnnotation repeats spec.hostPath.path on each PV, for readers that prefer annotations.
	PathAnnotation = "kube-env.drainer.io/path"
)

// provisioner is a minimal external dynamic provisioner, following the same protocol as the
// CSI external-provisioner: the PV binder (in kube-controller-manager) marks a pending claim of
// our StorageClass with volume.kubernetes.io/storage-provisioner; we create a hostPath PV
// pre-bound to the claim, backed by a new directory under root; the binder then binds the pair.
// When a claim is deleted, the binder marks its PV Released and, for reclaim policy Delete,
// leaves the deletion to us: we remove the directory and the PV.
type provisioner struct {
	client kubernetes.Interface
	root   string
}

func (p *provisioner) run(ctx context.Context) error {
	sc := &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{
			Name:        storageClassName,
			Annotations: map[string]string{"storageclass.kubernetes.io/is-default-class": "true"},
		},
		Provisioner:       provisionerName,
		ReclaimPolicy:     ptr.To(corev1.PersistentVolumeReclaimDelete),
		VolumeBindingMode: ptr.To(storagev1.VolumeBindingImmediate),
	}
	if _, err := p.client.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create StorageClass: %w", err)
	}

	factory := informers.NewSharedInformerFactory(p.client, 0)
	pvcs := factory.Core().V1().PersistentVolumeClaims()
	pvs := factory.Core().V1().PersistentVolumes()
	// Keys are "claim/NS/NAME" or "volume/NAME" so one queue serves both kinds.
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer queue.ShutDown()
	handler := func(prefix string) cache.ResourceEventHandlerFuncs {
		add := func(obj any) {
			if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
				queue.Add(prefix + key)
			}
		}
		return cache.ResourceEventHandlerFuncs{AddFunc: add, UpdateFunc: func(_, obj any) { add(obj) }}
	}
	if _, err := pvcs.Informer().AddEventHandler(handler("claim/")); err != nil {
		return err
	}
	if _, err := pvs.Informer().AddEventHandler(handler("volume/")); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), pvcs.Informer().HasSynced, pvs.Informer().HasSynced) {
		return ctx.Err()
	}
	go func() {
		for {
			key, shutdown := queue.Get()
			if shutdown {
				return
			}
			var err error
			if rest, ok := strings.CutPrefix(key, "claim/"); ok {
				ns, name, _ := cache.SplitMetaNamespaceKey(rest)
				var pvc *corev1.PersistentVolumeClaim
				if pvc, err = pvcs.Lister().PersistentVolumeClaims(ns).Get(name); err == nil {
					err = p.provision(ctx, pvc)
				}
			} else if rest, ok := strings.CutPrefix(key, "volume/"); ok {
				var pv *corev1.PersistentVolume
				if pv, err = pvs.Lister().Get(rest); err == nil {
					err = p.reclaim(ctx, pv)
				}
			}
			if err != nil && !apierrors.IsNotFound(err) {
				logf("volume provisioner: %s: %v", key, err)
				queue.AddRateLimited(key)
			} else {
				queue.Forget(key)
			}
			queue.Done(key)
		}
	}()
	<-ctx.Done()
	return nil
}

func (p *provisioner) provision(ctx context.Context, pvc *corev1.PersistentVolumeClaim) error {
	if pvc.Spec.VolumeName != "" || pvc.DeletionTimestamp != nil || pvc.Annotations[annStorageProvisioner] != provisionerName {
		return nil
	}
	name := "pvc-" + string(pvc.UID)
	// Directory names say which claim they belong to, so a person can find data by eye; the UID
	// keeps a re-created claim of the same name from inheriting old data.
	dir := filepath.Join(p.root, fmt.Sprintf("%s_%s_%s", pvc.Namespace, pvc.Name, pvc.UID))
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	_ = os.Chmod(dir, 0o777) // any uid a test pretends to run as may write there
	size, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	if !ok {
		return fmt.Errorf("claim %s/%s has no storage request", pvc.Namespace, pvc.Name)
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{annProvisionedBy: provisionerName, PathAnnotation: dir},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   pvc.Spec.AccessModes,
			VolumeMode:                    pvc.Spec.VolumeMode,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              storageClassName,
			ClaimRef: &corev1.ObjectReference{
				Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID,
			},
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: ptr.To(corev1.HostPathDirectory)},
			},
		},
	}
	_, err := p.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

func (p *provisioner) reclaim(ctx context.Context, pv *corev1.PersistentVolume) error {
	if pv.Status.Phase != corev1.VolumeReleased || pv.DeletionTimestamp != nil ||
		pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete ||
		pv.Annotations[annProvisionedBy] != provisionerName || pv.Spec.HostPath == nil {
		return nil
	}
	if err := os.RemoveAll(pv.Spec.HostPath.Path); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return p.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &pv.UID},
	})
}
