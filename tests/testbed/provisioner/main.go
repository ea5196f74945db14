// Command provisioner is the testbed's dynamic volume provisioner, the stand-in for k3s's
// local-path: each PersistentVolumeClaim of the StorageClass it serves gets a fresh folder under
// --root, exposed as a hostPath PersistentVolume pinned to the node the scheduler chose. Deleting
// the claim (reclaim policy Delete) removes the folder. The claim and volume bookkeeping is the
// upstream library's (sigs.k8s.io/sig-storage-lib-external-provisioner), as in a real provisioner.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

// rootAnnotation records on each volume the folder it was made under, so a provisioner started
// with another --root never deletes what it did not make.
const rootAnnotation = "testbed.kubesync.dev/volume-root"

type folderProvisioner struct {
	root string
}

func (p *folderProvisioner) Provision(_ context.Context, opts controller.ProvisionOptions) (*corev1.PersistentVolume, controller.ProvisioningState, error) {
	claim := opts.PVC
	for _, mode := range claim.Spec.AccessModes {
		if mode == corev1.ReadWriteMany || mode == corev1.ReadOnlyMany {
			return nil, controller.ProvisioningFinished, fmt.Errorf("access mode %s is not supported: a folder lives on one node", mode)
		}
	}
	dir := filepath.Join(p.root, opts.PVName)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, fmt.Errorf("making %s: %w", dir, err)
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	if opts.StorageClass.ReclaimPolicy != nil {
		reclaim = *opts.StorageClass.ReclaimPolicy
	}
	hostPathType := corev1.HostPathDirectoryOrCreate
	volume := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        opts.PVName,
			Annotations: map[string]string{rootAnnotation: p.root},
		},
		Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: reclaim,
			AccessModes:                   claim.Spec.AccessModes,
			VolumeMode:                    claim.Spec.VolumeMode,
			Capacity: corev1.ResourceList{
				corev1.ResourceStorage: claim.Spec.Resources.Requests[corev1.ResourceStorage],
			},
			MountOptions: opts.StorageClass.MountOptions,
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &hostPathType},
			},
		},
	}
	if opts.SelectedNodeName != "" {
		volume.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
				Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{opts.SelectedNodeName},
			}}}},
		}}
	}
	klog.InfoS("provisioned", "claim", klog.KObj(claim), "volume", opts.PVName, "path", dir)
	return volume, controller.ProvisioningFinished, nil
}

func (p *folderProvisioner) Delete(_ context.Context, volume *corev1.PersistentVolume) error {
	if volume.Annotations[rootAnnotation] != p.root || volume.Spec.HostPath == nil {
		return &controller.IgnoredError{Reason: "the volume was not made under " + p.root}
	}
	dir := volume.Spec.HostPath.Path
	if filepath.Dir(dir) != p.root || !strings.HasPrefix(filepath.Base(dir), "pvc-") {
		return errors.New("refusing to remove " + dir + ": not a volume folder under " + p.root)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	klog.InfoS("deleted", "volume", volume.Name, "path", dir)
	return nil
}

func main() {
	klog.InitFlags(nil)
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the control plane")
	name := flag.String("name", "testbed.kubesync.dev/local-path", "provisioner name that StorageClasses refer to")
	root := flag.String("root", "", "folder that holds one folder per volume")
	flag.Parse()
	if *kubeconfig == "" || *root == "" {
		klog.Fatal("--kubeconfig and --root are required")
	}
	absRoot, err := filepath.Abs(*root)
	if err != nil {
		klog.Fatal(err)
	}
	if err := os.MkdirAll(absRoot, 0o755); err != nil {
		klog.Fatal(err)
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Fatalf("reading %s: %v", *kubeconfig, err)
	}
	config.UserAgent = "testbed-provisioner"
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		klog.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	syscall.Umask(0)
	pc := controller.NewProvisionController(ctx, client, *name, &folderProvisioner{root: absRoot},
		controller.LeaderElection(false),
		controller.MetricsPort(0),
		controller.Threadiness(4),
	)
	klog.InfoS("serving", "provisioner", *name, "root", absRoot)
	pc.Run(ctx)
}
