// Package check validates connwarden's Kubernetes manifests
// (deploy/kubernetes): strictly against the Kubernetes OpenAPI schemas with
// kubeconform, and against what the agent needs from its pod. It is a module
// of its own so the Kubernetes API types and kubeconform stay out of the
// agent's go.mod; `make test` runs it.
package check
