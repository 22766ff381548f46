// Command kube-env runs a real Kubernetes control plane on this machine for drainer's tests.
//
// One binary plays every part, hyperkube style:
//
//	kube-env run [--data-dir DIR] [--nodes N] [--image NAME=PATH]...
//	                                           supervisor: etcd (embedded), the components
//	                                           below as child processes, nodes that run pods
//	                                           (as processes or simulated), volume provisioner,
//	                                           cluster DNS; prints KUBECONFIG=... when ready
//	kube-env kube-apiserver ARGS...            the upstream kube-apiserver command
//	kube-env kube-controller-manager ARGS...   the upstream kube-controller-manager command
//	kube-env kube-scheduler ARGS...            the upstream kube-scheduler command
//	kube-env kube-proxy ARGS...                the upstream kube-proxy command
//	kube-env kubectl ARGS...                   the upstream kubectl (kustomize built in)
//	kube-env image add|list --data-dir DIR [NAME=PATH...]
//	                                           register an OCI image with an instance
//	kube-env cleanup [--data-dir DIR]          remove what dead instances left behind
//	kube-env restart --data-dir DIR [--down D] NAME
//	                                           stop a component of a running instance (the
//	                                           API server: same port, certificates, etcd),
//	                                           leave it down D, start it again; returns when
//	                                           it is ready (control.go)
//	kube-env container-init SPEC               internal: becomes a pod's container
//
// The components run as separate processes (the supervisor re-executes its own binary) because
// each upstream command owns process-global state (flags, feature gates, metrics registries,
// logging configuration) that is not meant to be shared by two components in one process.
package main

import (
	"fmt"
	"os"

	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"

	// Its init function runs `kube-env container-init` before the packages above initialise.
	_ "drainer.test/kube-env/containerinit"
)

const usage = `usage: kube-env run [--data-dir DIR] [--nodes N] [--ready-timeout DURATION]
                    [--pod-runtime process|simulated] [--network-pool CIDR] [--image NAME=PATH]...
       kube-env kube-apiserver|kube-controller-manager|kube-scheduler|kube-proxy ARGS...
       kube-env kubectl ARGS...
       kube-env image add|list --data-dir DIR [NAME=PATH...]
       kube-env cleanup [--data-dir DIR]
       kube-env restart --data-dir DIR [--down DURATION] kube-apiserver|kube-controller-manager|kube-scheduler|kube-proxy`

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
	case "kube-proxy":
		cmd := proxy.NewProxyCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kubectl":
		// As cmd/kubectl's main, with argv[0] "kubectl": kubectl reads os.Args itself (plugins,
		// verbosity, .kuberc).
		os.Args = append([]string{"kubectl"}, args...)
		_, _ = logs.GlogSetter(kubectl.GetLogVerbosity(os.Args))
		command := kubectl.NewDefaultKubectlCommand()
		if err := cli.RunNoErrOutput(command); err != nil {
			kubectlutil.CheckErr(err)
		}
	case "image":
		if err := imageCommand(args); err != nil {
			fmt.Fprintf(os.Stderr, "kube-env: %v\n", err)
			os.Exit(1)
		}
	case "restart":
		if err := restartCommand(args); err != nil {
			fmt.Fprintf(os.Stderr, "kube-env: %v\n", err)
			os.Exit(1)
		}
	case "cleanup":
		if err := cleanupCommand(args); err != nil {
			fmt.Fprintf(os.Stderr, "kube-env: %v\n", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
}
