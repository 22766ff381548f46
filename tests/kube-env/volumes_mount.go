package main

// Volumes of real pods. Each volume is a directory on this machine that container inits
// bind-mount at every volumeMount (readOnly and subPath honoured), inside the container's own
// mount namespace only:
//
//   - persistentVolumeClaim: the bound PV's hostPath (or local) directory. A claim that is
//     missing, being deleted or not bound keeps the pod in ContainerCreating with a FailedMount
//     event carrying the kubelet's message, retried every 2 s. With a pod fsGroup, a claim
//     the pod may write is given to that group as the kubelet does for volumes whose driver
//     supports it (a CSI driver with fsGroupPolicy File, a local volume; see
//     setVolumeOwnership); a read-only one is left as it is.
//   - emptyDir: DATA/pods/UID/volumes/empty-dir/NAME (medium: Memory and sizeLimit are ignored:
//     it is a directory on disk).
//   - configMap, secret, downwardAPI, projected: files written with the kubelet's atomic layout
//     (..data symlink to a timestamped directory) and rewritten every 30 s, so updates of the
//     sources, and token rotation, reach running pods as they do with a kubelet.
//   - serviceAccountToken (projected): TokenRequest against the real API server for the pod's
//     ServiceAccount, bound to the pod (name and UID), with the volume's audience and
//     expirationSeconds; requested again after 80% of its lifetime, as the kubelet does.
//   - hostPath (with its type checks), ephemeral (the PVC the ephemeral volume controller made).
//
// Other volume types fail to mount with an explicit message.

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

type volPath struct {
	path     string
	readOnly bool
}

type podVolumes struct {
	paths  map[string]volPath
	dir    string
	tokens map[string]cachedToken
}

type cachedToken struct {
	token     string
	refreshAt time.Time
}

func (w *podWorker) setupVolumes(ctx context.Context) (*podVolumes, error) {
	pv := &podVolumes{paths: map[string]volPath{}, dir: filepath.Join(w.dir, "volumes"), tokens: map[string]cachedToken{}}
	for i := range w.pod.Spec.Volumes {
		v := &w.pod.Spec.Volumes[i]
		p, err := pv.setup(ctx, w, v)
		if err != nil {
			return nil, fmt.Errorf("MountVolume.SetUp failed for volume %q : %v", v.Name, err)
		}
		pv.paths[v.Name] = p
	}
	return pv, nil
}

// refresh rewrites the volumes whose content comes from the API.
func (pv *podVolumes) refresh(ctx context.Context, w *podWorker) error {
	for i := range w.pod.Spec.Volumes {
		v := &w.pod.Spec.Volumes[i]
		if v.ConfigMap != nil || v.Secret != nil || v.DownwardAPI != nil || v.Projected != nil {
			if _, err := pv.setup(ctx, w, v); err != nil {
				return fmt.Errorf("volume %q: %w", v.Name, err)
			}
		}
	}
	return nil
}

func (pv *podVolumes) setup(ctx context.Context, w *podWorker, v *corev1.Volume) (volPath, error) {
	dir := func(kind string) string { return filepath.Join(pv.dir, kind, v.Name) }
	fsGroup := int64(-1)
	if sc := w.pod.Spec.SecurityContext; sc != nil && sc.FSGroup != nil {
		fsGroup = *sc.FSGroup
	}
	switch {
	case v.PersistentVolumeClaim != nil:
		p, err := claimPath(ctx, w, v.PersistentVolumeClaim.ClaimName)
		if err == nil && !v.PersistentVolumeClaim.ReadOnly {
			err = setVolumeOwnership(p, w.pod.Spec.SecurityContext)
		}
		return volPath{path: p, readOnly: v.PersistentVolumeClaim.ReadOnly}, err
	case v.Ephemeral != nil:
		p, err := claimPath(ctx, w, w.pod.Name+"-"+v.Name)
		if err == nil {
			err = setVolumeOwnership(p, w.pod.Spec.SecurityContext)
		}
		return volPath{path: p}, err
	case v.EmptyDir != nil:
		d := dir("empty-dir")
		if err := os.MkdirAll(d, 0o777); err != nil {
			return volPath{}, err
		}
		if fsGroup >= 0 {
			_ = os.Chown(d, -1, int(fsGroup))
			_ = os.Chmod(d, 0o777|os.ModeSetgid)
		} else {
			_ = os.Chmod(d, 0o777)
		}
		return volPath{path: d}, nil
	case v.HostPath != nil:
		return volPath{path: v.HostPath.Path}, checkHostPath(v.HostPath)
	case v.ConfigMap != nil:
		files, err := configMapFiles(ctx, w, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional, modeOf(v.ConfigMap.DefaultMode))
		if err != nil {
			return volPath{}, err
		}
		return volPath{path: dir("configmap"), readOnly: true}, writeAtomic(dir("configmap"), files, fsGroup)
	case v.Secret != nil:
		files, err := secretFiles(ctx, w, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, modeOf(v.Secret.DefaultMode))
		if err != nil {
			return volPath{}, err
		}
		return volPath{path: dir("secret"), readOnly: true}, writeAtomic(dir("secret"), files, fsGroup)
	case v.DownwardAPI != nil:
		files, err := downwardFiles(w, v.DownwardAPI.Items, modeOf(v.DownwardAPI.DefaultMode))
		if err != nil {
			return volPath{}, err
		}
		return volPath{path: dir("downward-api"), readOnly: true}, writeAtomic(dir("downward-api"), files, fsGroup)
	case v.Projected != nil:
		files := map[string]fileData{}
		mode := modeOf(v.Projected.DefaultMode)
		for _, src := range v.Projected.Sources {
			var part map[string]fileData
			var err error
			switch {
			case src.ConfigMap != nil:
				part, err = configMapFiles(ctx, w, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, mode)
			case src.Secret != nil:
				part, err = secretFiles(ctx, w, src.Secret.Name, src.Secret.Items, src.Secret.Optional, mode)
			case src.DownwardAPI != nil:
				part, err = downwardFiles(w, src.DownwardAPI.Items, mode)
			case src.ServiceAccountToken != nil:
				var tok string
				tok, err = pv.token(ctx, w, src.ServiceAccountToken)
				part = map[string]fileData{src.ServiceAccountToken.Path: {data: []byte(tok), mode: mode}}
			default:
				err = fmt.Errorf("projected source not supported by kube-env (clusterTrustBundle, podCertificate)")
			}
			if err != nil {
				return volPath{}, err
			}
			for k, f := range part {
				files[k] = f
			}
		}
		return volPath{path: dir("projected"), readOnly: true}, writeAtomic(dir("projected"), files, fsGroup)
	}
	return volPath{}, fmt.Errorf("volume type not supported by kube-env (supported: persistentVolumeClaim, ephemeral, emptyDir, hostPath, configMap, secret, downwardAPI, projected)")
}

// claimPath finds the directory of a bound claim's volume, with the kubelet's messages for
// claims it cannot mount.
func claimPath(ctx context.Context, w *podWorker, name string) (string, error) {
	pvc, err := w.rt.client.CoreV1().PersistentVolumeClaims(w.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("persistentvolumeclaim %q not found", name)
	}
	if err != nil {
		return "", err
	}
	if pvc.DeletionTimestamp != nil {
		return "", fmt.Errorf("can't start pod because PVC %s/%s is being deleted", w.pod.Namespace, name)
	}
	if pvc.Status.Phase != corev1.ClaimBound || pvc.Spec.VolumeName == "" {
		return "", fmt.Errorf("PVC %s/%s is not bound", w.pod.Namespace, name)
	}
	pv, err := w.rt.client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("PersistentVolume %q of claim %s/%s: %v", pvc.Spec.VolumeName, w.pod.Namespace, name, err)
	}
	var p string
	switch {
	case pv.Spec.HostPath != nil:
		p = pv.Spec.HostPath.Path
	case pv.Spec.Local != nil:
		p = pv.Spec.Local.Path
	default:
		return "", fmt.Errorf("PersistentVolume %q is neither hostPath nor local: kube-env cannot mount it", pv.Name)
	}
	if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("PersistentVolume %q: directory %s does not exist", pv.Name, p)
	}
	return p, nil
}

// setVolumeOwnership is the kubelet's SetVolumeOwnership for a writable volume of a pod with
// an fsGroup: every file and directory under dir is given to the group (lchown) and made
// group-readable and -writable, directories also group-searchable and setgid (so what is
// created there later belongs to the group too); symbolic links keep their mode. With
// fsGroupChangePolicy OnRootMismatch nothing is changed when dir already has that group and
// those bits; with Always (the default) the walk runs at every mount, so files an
// application created since are made group-readable again.
func setVolumeOwnership(dir string, sc *corev1.PodSecurityContext) error {
	if sc == nil || sc.FSGroup == nil {
		return nil
	}
	gid := int(*sc.FSGroup)
	const rwMask, execMask = os.FileMode(0o660), os.FileMode(0o110)
	if sc.FSGroupChangePolicy != nil && *sc.FSGroupChangePolicy == corev1.FSGroupChangeOnRootMismatch {
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			st, ok := fi.Sys().(*syscall.Stat_t)
			want := rwMask | execMask
			if ok && int(st.Gid) == gid && fi.Mode().Perm()&want == want && fi.Mode()&os.ModeSetgid != 0 {
				return nil
			}
		}
	}
	return filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, -1, gid); err != nil {
			return fmt.Errorf("fsGroup %d: %w", gid, err)
		}
		if info.Mode()&os.ModeSymlink != 0 {
			return nil
		}
		mask := rwMask
		if info.IsDir() {
			mask |= execMask | os.ModeSetgid
		}
		if err := os.Chmod(p, info.Mode()|mask); err != nil {
			return fmt.Errorf("fsGroup %d: %w", gid, err)
		}
		return nil
	})
}

func checkHostPath(h *corev1.HostPathVolumeSource) error {
	t := corev1.HostPathUnset
	if h.Type != nil {
		t = *h.Type
	}
	fi, err := os.Stat(h.Path)
	switch t {
	case corev1.HostPathDirectoryOrCreate:
		if os.IsNotExist(err) {
			return os.MkdirAll(h.Path, 0o755)
		}
	case corev1.HostPathFileOrCreate:
		if os.IsNotExist(err) {
			if err := os.MkdirAll(filepath.Dir(h.Path), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(h.Path, os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return err
			}
			return f.Close()
		}
	case corev1.HostPathDirectory:
		if err != nil || !fi.IsDir() {
			return fmt.Errorf("hostPath type check failed: %s is not a directory", h.Path)
		}
	case corev1.HostPathFile:
		if err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("hostPath type check failed: %s is not a file", h.Path)
		}
	case corev1.HostPathSocket:
		if err != nil || fi.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("hostPath type check failed: %s is not a socket file", h.Path)
		}
	case corev1.HostPathCharDev, corev1.HostPathBlockDev:
		if err != nil || fi.Mode()&os.ModeDevice == 0 {
			return fmt.Errorf("hostPath type check failed: %s is not a device", h.Path)
		}
	}
	if t == corev1.HostPathUnset && os.IsNotExist(err) {
		// As the kubelet: an unchecked path that does not exist is created as a directory by
		// the runtime's bind mount.
		return os.MkdirAll(h.Path, 0o755)
	}
	return nil
}

type fileData struct {
	data []byte
	mode os.FileMode
}

func modeOf(m *int32) os.FileMode {
	if m == nil {
		return 0o644
	}
	return os.FileMode(*m) & os.ModePerm
}

func itemMode(m *int32, def os.FileMode) os.FileMode {
	if m == nil {
		return def
	}
	return os.FileMode(*m) & os.ModePerm
}

func configMapFiles(ctx context.Context, w *podWorker, name string, items []corev1.KeyToPath, optional *bool, mode os.FileMode) (map[string]fileData, error) {
	cm, err := w.rt.client.CoreV1().ConfigMaps(w.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && ptrTrue(optional) {
		return map[string]fileData{}, nil
	}
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("configmap %q not found", name)
	}
	if err != nil {
		return nil, err
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyFiles("configmap", name, data, items, optional, mode)
}

func secretFiles(ctx context.Context, w *podWorker, name string, items []corev1.KeyToPath, optional *bool, mode os.FileMode) (map[string]fileData, error) {
	s, err := w.rt.client.CoreV1().Secrets(w.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && ptrTrue(optional) {
		return map[string]fileData{}, nil
	}
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("secret %q not found", name)
	}
	if err != nil {
		return nil, err
	}
	return keyFiles("secret", name, s.Data, items, optional, mode)
}

func keyFiles(kind, name string, data map[string][]byte, items []corev1.KeyToPath, optional *bool, mode os.FileMode) (map[string]fileData, error) {
	out := map[string]fileData{}
	if len(items) == 0 {
		for k, v := range data {
			out[k] = fileData{data: v, mode: mode}
		}
		return out, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if ptrTrue(optional) {
				continue
			}
			return nil, fmt.Errorf("configuration error: %s %q has no key %q", kind, name, it.Key)
		}
		out[it.Path] = fileData{data: v, mode: itemMode(it.Mode, mode)}
	}
	return out, nil
}

func downwardFiles(w *podWorker, items []corev1.DownwardAPIVolumeFile, mode os.FileMode) (map[string]fileData, error) {
	out := map[string]fileData{}
	for _, it := range items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			v, err = w.fieldValue(it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			v, err = w.resourceValue(it.ResourceFieldRef, &w.pod.Spec.Containers[0])
		}
		if err != nil {
			return nil, err
		}
		out[it.Path] = fileData{data: []byte(v), mode: itemMode(it.Mode, mode)}
	}
	return out, nil
}

// token returns a token for the pod's ServiceAccount from TokenRequest, bound to the pod.
func (pv *podVolumes) token(ctx context.Context, w *podWorker, src *corev1.ServiceAccountTokenProjection) (string, error) {
	exp := ptr.Deref(src.ExpirationSeconds, 3600)
	key := fmt.Sprintf("%s|%d", src.Audience, exp)
	if t, ok := pv.tokens[key]; ok && time.Now().Before(t.refreshAt) {
		return t.token, nil
	}
	sa := w.pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: w.pod.Name, UID: w.uid},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	issued, err := w.rt.client.CoreV1().ServiceAccounts(w.pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("failed to fetch token: %v", err)
	}
	now := time.Now()
	life := issued.Status.ExpirationTimestamp.Sub(now)
	pv.tokens[key] = cachedToken{token: issued.Status.Token, refreshAt: now.Add(life * 8 / 10)}
	return issued.Status.Token, nil
}

// writeAtomic writes files into dir with the kubelet's AtomicWriter layout: the payload in a
// timestamped directory, "..data" pointing at it, and one symlink per top-level entry through
// "..data", so a reader never sees half of an update.
func writeAtomic(dir string, files map[string]fileData, gid int64) error {
	for p := range files {
		clean := path.Clean(p)
		if p == "" || strings.HasPrefix(clean, "..") || path.IsAbs(p) || strings.HasPrefix(path.Base(clean), "..") {
			return fmt.Errorf("invalid path %q in volume", p)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if current, err := os.Readlink(filepath.Join(dir, "..data")); err == nil && sameFiles(filepath.Join(dir, current), files) {
		return nil
	}
	ts, err := os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return err
	}
	_ = os.Chmod(ts, 0o755)
	tops := map[string]bool{}
	for p, f := range files {
		target := filepath.Join(ts, filepath.FromSlash(path.Clean(p)))
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(target, f.data, f.mode); err != nil {
			return err
		}
		mode := f.mode
		if gid >= 0 {
			_ = os.Chown(target, -1, int(gid))
			mode |= 0o040
		}
		if err := os.Chmod(target, mode); err != nil {
			return err
		}
		tops[strings.Split(path.Clean(p), "/")[0]] = true
	}
	tmpLink := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmpLink)
	if err := os.Symlink(filepath.Base(ts), tmpLink); err != nil {
		return err
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	if err := os.Rename(tmpLink, filepath.Join(dir, "..data")); err != nil {
		return err
	}
	for top := range tops {
		link := filepath.Join(dir, top)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", top), link); err != nil {
				return err
			}
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "..") && !tops[name] {
			_ = os.Remove(filepath.Join(dir, name))
		}
	}
	if old != "" && old != filepath.Base(ts) {
		_ = os.RemoveAll(filepath.Join(dir, old))
	}
	return nil
}

// sameFiles reports whether dir holds exactly files (same content and modes).
func sameFiles(dir string, files map[string]fileData) bool {
	count := 0
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		f, ok := files[filepath.ToSlash(rel)]
		if !ok {
			for k, v := range files {
				if path.Clean(k) == filepath.ToSlash(rel) {
					f, ok = v, true
				}
			}
		}
		if !ok {
			return fmt.Errorf("extra")
		}
		data, err := os.ReadFile(p)
		if err != nil || string(data) != string(f.data) || fi.Mode().Perm()&^0o040 != f.mode.Perm()&^0o040 {
			return fmt.Errorf("changed")
		}
		count++
		return nil
	})
	return err == nil && count == len(files)
}
