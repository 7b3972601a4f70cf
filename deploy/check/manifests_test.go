package check

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	yamlutil "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite deploy/kubernetes/20-rules.yaml from rules/default")

const (
	manifestDir = "../kubernetes"
	rulesFile   = "20-rules.yaml"
	unitFile    = "../systemd/connwarden.service"
	defaultPack = "../../rules/default"
)

// object is one YAML document of the manifests.
type object struct {
	file string
	raw  []byte
	gvk  gvk
	name string
	ns   string
}

func readCloser(b []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }

// loadManifests reads every document of deploy/kubernetes/*.yaml.
func loadManifests(t *testing.T) []object {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(manifestDir, "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no manifests")
	}
	var objs []object
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := yamlutil.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			var head struct {
				metav1.TypeMeta `json:",inline"`
				Metadata        metav1.ObjectMeta `json:"metadata"`
			}
			if err := yaml.Unmarshal(doc, &head); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if head.Kind == "" {
				var any map[string]any
				if yaml.Unmarshal(doc, &any); len(any) > 0 {
					t.Fatalf("%s: a document without kind", f)
				}
				continue // comments only
			}
			g, v, ok := strings.Cut(head.APIVersion, "/")
			if !ok {
				g, v = "", head.APIVersion
			}
			objs = append(objs, object{file: filepath.Base(f), raw: doc, gvk: gvk{g, v, head.Kind}, name: head.Metadata.Name, ns: head.Metadata.Namespace})
		}
	}
	return objs
}

// decode decodes o strictly into T (unknown fields are errors).
func decode[T any](t *testing.T, o object) *T {
	t.Helper()
	var v T
	if err := yaml.UnmarshalStrict(o.raw, &v); err != nil {
		t.Fatalf("%s: %s %s: %v", o.file, o.gvk.Kind, o.name, err)
	}
	return &v
}

// manifests are the decoded objects, one of each kind the agent needs.
type manifests struct {
	ns    *corev1.Namespace
	sa    *corev1.ServiceAccount
	rules *corev1.ConfigMap
	ds    *appsv1.DaemonSet
	objs  []object
}

func load(t *testing.T) manifests {
	t.Helper()
	var m manifests
	m.objs = loadManifests(t)
	for _, o := range m.objs {
		switch o.gvk {
		case gvk{"", "v1", "Namespace"}:
			m.ns = decode[corev1.Namespace](t, o)
		case gvk{"", "v1", "ServiceAccount"}:
			m.sa = decode[corev1.ServiceAccount](t, o)
		case gvk{"", "v1", "ConfigMap"}:
			m.rules = decode[corev1.ConfigMap](t, o)
		case gvk{"apps", "v1", "DaemonSet"}:
			m.ds = decode[appsv1.DaemonSet](t, o)
		default:
			t.Fatalf("%s: %s %s is not one of the kinds these checks know", o.file, o.gvk.apiVersion(), o.gvk.Kind)
		}
	}
	if m.ns == nil || m.sa == nil || m.rules == nil || m.ds == nil {
		t.Fatal("want a Namespace, a ServiceAccount, a ConfigMap and a DaemonSet")
	}
	for _, o := range m.objs {
		if o.gvk.Kind != "Namespace" && o.ns != m.ns.Name {
			t.Errorf("%s: %s %s in namespace %q, want %q", o.file, o.gvk.Kind, o.name, o.ns, m.ns.Name)
		}
	}
	return m
}

// unitCapabilities reads CapabilityBoundingSet= of the systemd unit, in the
// Kubernetes spelling (no CAP_ prefix).
func unitCapabilities(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	var caps []string
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapabilityBoundingSet="); ok {
			for _, c := range strings.Fields(v) {
				caps = append(caps, strings.TrimPrefix(c, "CAP_"))
			}
		}
	}
	if len(caps) == 0 {
		t.Fatal("the unit declares no CapabilityBoundingSet")
	}
	slices.Sort(caps)
	return caps
}

// agentFlags parses the container's argv (command + args) into the
// subcommand and --flag=value pairs.
func agentFlags(t *testing.T, c corev1.Container) (string, map[string]string) {
	t.Helper()
	argv := append(slices.Clone(c.Command), c.Args...)
	if len(argv) < 2 || filepath.Base(argv[0]) != "connwarden" {
		t.Fatalf("container runs %q, want connwarden SUBCOMMAND", argv)
	}
	flags := map[string]string{}
	for _, a := range argv[2:] {
		k, v, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(k, "--") {
			t.Fatalf("argument %q: write flags as --name=value", a)
		}
		flags[strings.TrimPrefix(k, "--")] = v
	}
	return argv[1], flags
}

// The DaemonSet gives the agent what it needs and nothing more: the node's
// network and pids, the node's bpffs with mount propagation from the host,
// tracefs, rules from the ConfigMap as a directory (so kubelet's updates reach
// the agent, which reloads on change), the API token from a Secret, probes
// on /healthz and /readyz, resource requests, and exactly the systemd unit's
// capabilities without privileged mode.
func TestDaemonSetGivesTheAgentWhatItNeeds(t *testing.T) {
	m := load(t)
	ds := m.ds
	pod := ds.Spec.Template.Spec

	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %v does not select the pod template's labels %v (%v)", ds.Spec.Selector, ds.Spec.Template.Labels, err)
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
		t.Errorf("update strategy %q, want RollingUpdate", ds.Spec.UpdateStrategy.Type)
	}
	if !pod.HostNetwork || !pod.HostPID {
		t.Errorf("hostNetwork %v hostPID %v: want both", pod.HostNetwork, pod.HostPID)
	}
	if pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy %q: a hostNetwork pod wants ClusterFirstWithHostNet", pod.DNSPolicy)
	}
	if pod.ServiceAccountName != m.sa.Name {
		t.Errorf("serviceAccountName %q, want %q", pod.ServiceAccountName, m.sa.Name)
	}
	for what, v := range map[string]*bool{"pod": pod.AutomountServiceAccountToken, "service account": m.sa.AutomountServiceAccountToken} {
		if v == nil || *v {
			t.Errorf("%s mounts an API token; the agent never talks to the API", what)
		}
	}
	if !slices.ContainsFunc(pod.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
	}) {
		t.Errorf("tolerations %v: want one that tolerates every taint", pod.Tolerations)
	}
	if m.ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("namespace labels %v: Pod Security must allow host namespaces and paths", m.ns.Labels)
	}

	if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 {
		t.Fatalf("want one container, have %d (+%d init)", len(pod.Containers), len(pod.InitContainers))
	}
	c := pod.Containers[0]
	sub, flags := agentFlags(t, c)
	if sub != "run" {
		t.Errorf("container runs connwarden %s, want run", sub)
	}

	// Capabilities: exactly the unit's, not privileged, nothing to escalate.
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Fatalf("securityContext %+v: want privileged false, allowPrivilegeEscalation false, readOnlyRootFilesystem true, runAsUser 0, all explicit", sc)
	}
	var add, drop []string
	if sc.Capabilities != nil {
		for _, c := range sc.Capabilities.Add {
			add = append(add, string(c))
		}
		for _, c := range sc.Capabilities.Drop {
			drop = append(drop, string(c))
		}
	}
	slices.Sort(add)
	if diff := cmp.Diff(unitCapabilities(t), add); diff != "" {
		t.Errorf("capabilities added differ from the systemd unit's (-unit +daemonset):\n%s", diff)
	}
	if !slices.Equal(drop, []string{"ALL"}) {
		t.Errorf("capabilities dropped %q, want [ALL]", drop)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeUnconfined {
		t.Error("seccompProfile: runtime default profiles refuse bpf() without CAP_SYS_ADMIN; want Unconfined")
	}
	if sc.AppArmorProfile == nil || sc.AppArmorProfile.Type != corev1.AppArmorProfileTypeUnconfined {
		t.Error("appArmorProfile: the default profile refuses pinning under /sys/fs/; want Unconfined")
	}

	// Volumes, by the path they are mounted at.
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	type mounted struct {
		m corev1.VolumeMount
		v corev1.Volume
	}
	at := map[string]mounted{}
	for _, vm := range c.VolumeMounts {
		v, ok := vols[vm.Name]
		if !ok {
			t.Errorf("volumeMount %s names no volume", vm.Name)
		}
		if vm.SubPath != "" || vm.SubPathExpr != "" {
			t.Errorf("volumeMount %s uses subPath: such mounts are never updated", vm.Name)
		}
		if p := vm.MountPropagation; p != nil && !slices.Contains([]corev1.MountPropagationMode{corev1.MountPropagationNone, corev1.MountPropagationHostToContainer, corev1.MountPropagationBidirectional}, *p) {
			t.Errorf("volumeMount %s: mountPropagation %q is not a mode", vm.Name, *p)
		}
		at[vm.MountPath] = mounted{vm, v}
	}
	hostPath := func(mountPath, want string, ro bool) mounted {
		t.Helper()
		mv, ok := at[mountPath]
		if !ok {
			t.Errorf("nothing mounted at %s", mountPath)
			return mv
		}
		if hp := mv.v.HostPath; hp == nil || hp.Path != want || hp.Type == nil || *hp.Type != corev1.HostPathDirectory {
			t.Errorf("%s: volume %+v, want hostPath %s of type Directory", mountPath, mv.v.VolumeSource, want)
		}
		if mv.m.ReadOnly != ro {
			t.Errorf("%s: readOnly %v, want %v", mountPath, mv.m.ReadOnly, ro)
		}
		return mv
	}
	bpffs := hostPath("/sys/fs/bpf", "/sys/fs/bpf", false)
	if p := bpffs.m.MountPropagation; p == nil || *p != corev1.MountPropagationHostToContainer {
		t.Errorf("bpffs mountPropagation %s: want HostToContainer (Bidirectional needs a privileged pod)", ptrString(p))
	}
	// Writable: the PAM probes are made through uprobe_events.
	hostPath("/sys/kernel/tracing", "/sys/kernel/tracing", false)
	if !strings.HasPrefix(flags["pin-dir"], "/sys/fs/bpf/") {
		t.Errorf("--pin-dir=%s is not in the host's bpffs", flags["pin-dir"])
	}
	if cg := flagOrEnv(c, flags, "cgroup", "CONNWARDEN_CGROUP_PATH"); cg != "" {
		hostPath(cg, "/sys/fs/cgroup", true)
	}

	rulesAt, ok := at[flags["rules"]]
	if !ok || rulesAt.v.ConfigMap == nil || rulesAt.v.ConfigMap.Name != m.rules.Name {
		t.Errorf("--rules=%s is not the ConfigMap %s mounted as a directory", flags["rules"], m.rules.Name)
	}
	if sock := flags["api-socket"]; sock == "" {
		t.Error("no --api-socket: kubectl exec ... connwarden needs it")
	} else if mv, ok := at[filepath.Dir(sock)]; !ok || mv.v.EmptyDir == nil || mv.m.ReadOnly {
		t.Errorf("--api-socket=%s: its directory must be a writable emptyDir (the root file system is read-only)", sock)
	}

	// The token, from a Secret, optional.
	var token *corev1.EnvVar
	for i, e := range c.Env {
		if e.Name == "CONNWARDEN_API_TOKEN" {
			token = &c.Env[i]
		}
	}
	if token == nil || token.ValueFrom == nil || token.ValueFrom.SecretKeyRef == nil || token.ValueFrom.SecretKeyRef.Optional == nil || !*token.ValueFrom.SecretKeyRef.Optional {
		t.Errorf("CONNWARDEN_API_TOKEN %+v: want it from an optional Secret key", token)
	}

	// The API: on the node's address, on the port the probes use.
	listen := flagOrEnv(c, flags, "api-listen", "CONNWARDEN_API_LISTEN")
	if strings.Contains(listen, "$(HOST_IP)") {
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == "HOST_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.hostIP"
		}) {
			t.Error("--api-listen uses $(HOST_IP) but HOST_IP is not status.hostIP")
		}
	}
	_, port, _ := strings.Cut(strings.ReplaceAll(listen, "$(HOST_IP)", "h"), ":")
	var api *corev1.ContainerPort
	for i, p := range c.Ports {
		if fmt.Sprint(p.ContainerPort) == port {
			api = &c.Ports[i]
		}
	}
	if api == nil || api.HostPort != api.ContainerPort {
		t.Fatalf("no container port (with hostPort, as hostNetwork requires) for --api-listen=%s", listen)
	}
	for name, pr := range map[string]struct {
		p    *corev1.Probe
		path string
	}{"liveness": {c.LivenessProbe, "/healthz"}, "readiness": {c.ReadinessProbe, "/readyz"}} {
		if pr.p == nil || pr.p.HTTPGet == nil || pr.p.HTTPGet.Path != pr.path ||
			(pr.p.HTTPGet.Port.String() != api.Name && pr.p.HTTPGet.Port.IntValue() != int(api.ContainerPort)) {
			t.Errorf("%s probe %+v: want GET %s on the API port", name, pr.p, pr.path)
		}
	}

	req := c.Resources.Requests
	if req.Cpu().IsZero() || req.Memory().IsZero() {
		t.Errorf("resource requests %v: want cpu and memory", req)
	}
	if lim := c.Resources.Limits.Memory(); lim.IsZero() || lim.Cmp(*req.Memory()) < 0 {
		t.Errorf("memory limit %v: want one, at least the request %v", lim, req.Memory())
	}
	if !c.Resources.Limits.Cpu().IsZero() {
		t.Error("a CPU limit throttles the agent into losing events")
	}
}

// flagOrEnv is the value of --flag, else of the environment variable.
func flagOrEnv(c corev1.Container, flags map[string]string, flag, env string) string {
	if v, ok := flags[flag]; ok {
		return v
	}
	for _, e := range c.Env {
		if e.Name == env {
			return e.Value
		}
	}
	return ""
}

// rulesConfigMap renders the default pack as the rules ConfigMap.
func rulesConfigMap(t *testing.T) []byte {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(defaultPack, "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no default rules")
	}
	var b bytes.Buffer
	b.WriteString(`# The rules every agent runs, one file per key: the default pack
# (rules/default/, kept in step by deploy/check: go test -run RulesConfigMap
# -update). Tune them here or replace them (docs/operations.md). kubelet
# updates the mounted files within about a minute of a change; the agent
# reloads them within 2 seconds, and keeps its running rules if the new ones
# are invalid (connwarden_rules_last_reload_successful 0).
apiVersion: v1
kind: ConfigMap
metadata:
  name: connwarden-rules
  namespace: connwarden
  labels:
    app.kubernetes.io/name: connwarden
data:
`)
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "  %s: |\n", filepath.Base(f))
		for _, l := range strings.SplitAfter(strings.TrimRight(string(body), "\n")+"\n", "\n") {
			if l == "\n" {
				b.WriteString(l)
			} else if l != "" {
				b.WriteString("    " + l)
			}
		}
	}
	return b.Bytes()
}

// The rules ConfigMap holds the default pack, byte for byte.
func TestRulesConfigMapIsTheDefaultPack(t *testing.T) {
	want := rulesConfigMap(t)
	path := filepath.Join(manifestDir, rulesFile)
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := load(t)
	files, _ := filepath.Glob(filepath.Join(defaultPack, "*.yaml"))
	wantData := map[string]string{}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		wantData[filepath.Base(f)] = string(b)
	}
	if diff := cmp.Diff(wantData, m.rules.Data); diff != "" {
		t.Errorf("%s differs from rules/default (-want +got); run go test -run RulesConfigMap -update in deploy/check:\n%s", rulesFile, diff)
	}
}

// The real agent accepts the DaemonSet's command line and the ConfigMap's
// rules.
func TestAgentAcceptsTheManifests(t *testing.T) {
	m := load(t)
	bin := filepath.Join(t.TempDir(), "connwarden")
	build := exec.Command("go", "build", "-o", bin, "./cmd/connwarden")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the agent: %v\n%s", err, out)
	}

	rules := t.TempDir()
	for name, body := range m.rules.Data {
		os.WriteFile(filepath.Join(rules, name), []byte(body), 0o644)
	}
	out, err := exec.Command(bin, "rules", "validate", rules).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "ok: ") {
		t.Errorf("connwarden rules validate on the ConfigMap: %v\n%s", err, out)
	}

	// Every flag is one `connwarden run` knows (--help stops after parsing).
	c := m.ds.Spec.Template.Spec.Containers[0]
	args := append(slices.Clone(c.Command[1:]), c.Args...)
	for i := range args {
		args[i] = strings.ReplaceAll(args[i], "$(HOST_IP)", "192.0.2.1")
	}
	if out, err := exec.Command(bin, append(args, "--help")...).CombinedOutput(); err != nil {
		t.Errorf("connwarden %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if _, err := exec.Command(bin, "run", "--no-such-flag", "--help").CombinedOutput(); err == nil {
		t.Error("connwarden run accepts an unknown flag with --help: the check above is void")
	}
}

func ptrString[T ~string](p *T) string {
	if p == nil {
		return "unset"
	}
	return string(*p)
}
