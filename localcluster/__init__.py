"""A real local Kubernetes control plane with simulated GPU nodes, for tests and the demo.

Modules:
    pki           certificates and keys for etcd, the API server and the service accounts
    controlplane  starts and stops etcd, kube-apiserver, kube-controller-manager, kube-scheduler
    fleet         the fleet file: which simulated nodes exist and what GPUs they carry
    nodes         registers the fleet's Node objects and keeps them Ready (leases, heartbeats)
    images        the table mapping container images to local entrypoints
    podrunner     the kubelet stand-in that runs pods bound to the simulated nodes
    podexec       the per-container helper that enters a private mount namespace and execs
    supervisor    the background process that runs the heartbeater and the pod runner
    cluster       ``up`` / ``down`` / ``status`` glue used by the CLI and the pytest plugin
    s3            SeaweedFS wrapper (owned by the trainer engineer)
"""
