// Command kube-env runs a real Kubernetes control plane on 127.0.0.1 for drainer's tests.
//
// One binary plays every part, hyperkube style:
//
//	kube-env run [--data-dir DIR] [--nodes N]   supervisor: etcd (embedded), the components
//	                                           below as child processes, node simulator and
//	                                           volume provisioner; prints KUBECONFIG=... when ready
//	kube-env kube-apiserver ARGS...            the upstream kube-apiserver command
//	kube-env kube-controller-manager ARGS...   the upstream kube-controller-manager command
//	kube-env kube-scheduler ARGS...            the upstream kube-scheduler command
//
// The components run as separate processes (the supervisor re-executes its own binary) because
// each upstream command owns process-global state (flags, feature gates, metrics registries,
// logging configuration) that is not meant to be shared by two components in one process.
package main

import (
	"fmt"
	"os"

	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

const usage = `usage: kube-env run [--data-dir DIR] [--nodes N] [--ready-timeout DURATION]
       kube-env kube-apiserver|kube-controller-manager|kube-scheduler ARGS...`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	sub, args := os.Args[1], os.Args[2:]
	switch sub {
	case "run":
		if err := runSupervisor(args); err != nil {
			fmt.Fprintf(os.Stderr, "kube-env: %v\n", err)
			os.Exit(1)
		}
	case "kube-apiserver":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-controller-manager":
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-scheduler":
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
}
