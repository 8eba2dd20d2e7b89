"""kserve-compat: does this (KServe release x kube-rbac-proxy image x Kubernetes) still work?"""

__version__ = "0.1.0"
