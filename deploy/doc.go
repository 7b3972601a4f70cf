// Package deploy holds what operators install and watch, and nothing the
// agent imports: the systemd unit and default config, the Kubernetes
// manifests, the Grafana dashboard and the Prometheus alerts. Its tests hold
// each file to a tool (systemd-analyze, promtool, make install, make release);
// the Kubernetes manifests are checked by deploy/check, a module of its own so
// that the Kubernetes API types stay out of the agent's go.mod, and the
// end-to-end tests in test/ run the agent as the unit declares it.
package deploy
