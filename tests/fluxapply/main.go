// Command fluxapply applies manifests as Flux's kustomize-controller does, with the library
// it is built on (github.com/fluxcd/pkg/ssa): server-side apply under the field manager
// "kustomize-controller", a server-side dry-run first, and, before each apply, the
// managedFields cleanup the controller configures: the fields of every manager whose name
// starts with "kubectl" (and of "before-first-apply") are taken over, so that hand edits
// made with kubectl are undone by the next sync.
//
//	fluxapply --kubeconfig K -f MANIFEST
//
// prints one line per object and its action ("TaskRun/team-a/t1 configured").
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/fluxcd/pkg/ssa"
	"github.com/fluxcd/pkg/ssa/normalize"
	"github.com/fluxcd/pkg/ssa/utils"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

const (
	manager = "kustomize-controller"
	group   = "kustomize.toolkit.fluxcd.io"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "path to the kubeconfig")
	manifest := flag.String("f", "", "the manifest to apply (YAML or JSON, one or more objects)")
	flag.Parse()
	if *kubeconfig == "" || *manifest == "" {
		fmt.Fprintln(os.Stderr, "usage: fluxapply --kubeconfig K -f MANIFEST")
		os.Exit(2)
	}
	if err := run(*kubeconfig, *manifest); err != nil {
		fmt.Fprintln(os.Stderr, "fluxapply:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, manifest string) error {
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("loading %s: %w", kubeconfig, err)
	}
	kube, err := client.New(config, client.Options{})
	if err != nil {
		return err
	}
	file, err := os.Open(manifest)
	if err != nil {
		return err
	}
	defer file.Close()
	objects, err := utils.ReadObjects(file)
	if err != nil {
		return fmt.Errorf("reading %s: %w", manifest, err)
	}
	if err := normalize.UnstructuredList(objects); err != nil {
		return err
	}
	// No poller: only ApplyAllStaged and Wait use it, and this applies one stage.
	resources := ssa.NewResourceManager(kube, nil, ssa.Owner{Field: manager, Group: group})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	changes, err := resources.ApplyAll(ctx, objects, applyOptions())
	if err != nil {
		return err
	}
	for _, change := range changes.Entries {
		fmt.Println(change.String())
	}
	return nil
}

// The options kustomize-controller passes (internal/controller/kustomization_controller.go,
// apply), for a Kustomization without spec.force and with no --override-manager flags.
func applyOptions() ssa.ApplyOptions {
	opts := ssa.DefaultApplyOptions()
	opts.ExclusionSelector = map[string]string{
		group + "/reconcile": "disabled",
		group + "/ssa":       "Ignore",
	}
	opts.IfNotPresentSelector = map[string]string{group + "/ssa": "IfNotPresent"}
	opts.ForceSelector = map[string]string{group + "/force": "Enabled"}
	opts.Cleanup = ssa.ApplyCleanupOptions{
		Annotations: []string{corev1.LastAppliedConfigAnnotation},
		FieldManagers: []ssa.FieldManager{
			// to undo changes made with 'kubectl apply --server-side --force-conflicts'
			{Name: "kubectl", OperationType: metav1.ManagedFieldsOperationApply},
			// to undo changes made with 'kubectl apply'
			{Name: "kubectl", OperationType: metav1.ManagedFieldsOperationUpdate},
			{Name: "before-first-apply", OperationType: metav1.ManagedFieldsOperationUpdate},
			// to undo changes made by the controller before server-side apply
			{Name: manager, OperationType: metav1.ManagedFieldsOperationUpdate},
		},
		Exclusions: map[string]string{group + "/ssa": "Merge"},
	}
	return opts
}
