"""The kind tier's image set, built offline from upstream source.

Our machines (and many users' CI) reach package registries but no container registry, so
every image a kind cluster needs is built here: the node image (``node``), and the images
the release manifests name (``components``: kube-rbac-proxy, the KServe controller,
cert-manager). Each image is tagged with the exact reference the manifests and the matrix
use, so the manifests apply unchanged, and labelled with the recipe it was built from
(``docker_image``), so a changed recipe rebuilds it and an unchanged one is reused.
"""
