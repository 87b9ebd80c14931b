package main

import (
	"github.com/troupe-llm/troupe/app"

	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/troupe-llm/troupe/cluster"
)

// manifests are the objects of deploy/kubernetes, decoded strictly.
type manifests struct {
	statefulSets []*appsv1.StatefulSet
	services     []*corev1.Service
	pdbs         []*policyv1.PodDisruptionBudget
	configMaps   []*corev1.ConfigMap
}

// loadManifests decodes every document of every file with the Kubernetes
// API types: an unknown field, a wrong type or an unknown kind fails.
func loadManifests(t *testing.T) manifests {
	t.Helper()
	files, err := filepath.Glob("../../deploy/kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in deploy/kubernetes: %v", err)
	}
	var m manifests
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			where := fmt.Sprintf("%s, document %d", filepath.Base(file), i+1)
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			var obj any
			switch tm.APIVersion + " " + tm.Kind {
			case "apps/v1 StatefulSet":
				o := new(appsv1.StatefulSet)
				m.statefulSets, obj = append(m.statefulSets, o), o
			case "v1 Service":
				o := new(corev1.Service)
				m.services, obj = append(m.services, o), o
			case "policy/v1 PodDisruptionBudget":
				o := new(policyv1.PodDisruptionBudget)
				m.pdbs, obj = append(m.pdbs, o), o
			case "v1 ConfigMap":
				o := new(corev1.ConfigMap)
				m.configMaps, obj = append(m.configMaps, o), o
			default:
				t.Fatalf("%s: unexpected %s %s", where, tm.APIVersion, tm.Kind)
			}
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
		}
	}
	return m
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// The Kubernetes manifests agree with the binary: every environment
// variable is one of its settings with a valid value, the ports are the
// ones those settings give, the probes ask the readiness and liveness
// routes on the HTTP port, the preStop hook is `troupe drain` within a
// grace period longer than DRAIN_TIMEOUT, the headless service joins, the
// budget and the scrape annotations cover the pods.
func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)
	if len(m.statefulSets) != 1 || len(m.pdbs) != 1 || len(m.services) != 2 || len(m.configMaps) != 1 {
		t.Fatalf("want one StatefulSet, one PodDisruptionBudget, two Services and one ConfigMap; got %d, %d, %d, %d",
			len(m.statefulSets), len(m.pdbs), len(m.services), len(m.configMaps))
	}
	sts := m.statefulSets[0]
	pod := sts.Spec.Template
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	podLabels := labels.Set(pod.Labels)
	sel, err := metav1.LabelSelectorAsSelector(sts.Spec.Selector)
	if err != nil || !sel.Matches(podLabels) {
		t.Fatalf("the StatefulSet's selector does not match its pods: %v", err)
	}

	// Environment: known settings, values the binary accepts.
	known := map[string]bool{}
	for _, env := range app.SettingNames() {
		known[env] = true
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if !known[e.Name] {
			t.Errorf("env %s is not a setting of troupe", e.Name)
		}
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.Name == "PUBLIC_ADDRESS":
			env[e.Name] = "10.0.0.7" // status.podIP
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			env[e.Name] = "troupe-0" // metadata.name
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			env[e.Name] = "a key from a Secret"
		default:
			env[e.Name] = e.Value
		}
	}
	cfg, err := app.ParseConfig(nil, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatalf("the manifest's environment does not parse: %v", err)
	}
	// The key locks the cluster; in a manifest it must come from a Secret.
	for _, e := range c.Env {
		if e.Name == "CLUSTER_KEY" && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
			t.Error("CLUSTER_KEY is not taken from a Secret")
		}
	}
	for _, s := range []string{"PORT", "GOSSIP_PORT", "REMOTE_PORT", "JOIN", "PUBLIC_ADDRESS", "DRAIN_TIMEOUT", "CLUSTER_KEY"} {
		if !cfg.IsSet(s) {
			t.Errorf("the manifest does not set %s", s)
		}
	}
	if cfg.PublicAddress != "10.0.0.7" || cfg.BindAddress != "0.0.0.0" {
		t.Errorf("a pod announces %s and binds %s, want its pod IP and every interface", cfg.PublicAddress, cfg.BindAddress)
	}

	// Ports: what the settings say, named for the probes and services.
	ports := map[string]corev1.ContainerPort{}
	for _, p := range c.Ports {
		ports[p.Name] = p
	}
	for _, want := range []corev1.ContainerPort{
		{Name: "http", ContainerPort: int32(cfg.Port), Protocol: corev1.ProtocolTCP},
		{Name: "gossip-tcp", ContainerPort: int32(cfg.GossipPort), Protocol: corev1.ProtocolTCP},
		{Name: "gossip-udp", ContainerPort: int32(cfg.GossipPort), Protocol: corev1.ProtocolUDP},
		{Name: "remote", ContainerPort: int32(cfg.RemotePort), Protocol: corev1.ProtocolTCP},
	} {
		if got := ports[want.Name]; got != want {
			t.Errorf("container port %s: %+v, want %+v", want.Name, got, want)
		}
	}
	if cfg.GossipPort != cluster.DefaultGossipPort || cfg.RemotePort != cluster.DefaultRemotePort || cfg.Port != app.DefaultConfig().Port {
		t.Errorf("ports %d, %d, %d differ from the defaults the image documents", cfg.Port, cfg.GossipPort, cfg.RemotePort)
	}

	// Probes: readiness on /ready, liveness (and start-up) on /health.
	probes := map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe}
	for name, path := range map[string]string{"readiness": "/ready", "liveness": "/health", "startup": "/health"} {
		p := probes[name]
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port.String() != "http" {
			t.Errorf("%s probe %+v, want GET %s on port http", name, p, path)
		}
	}

	// preStop drains, within the grace period.
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Exec == nil ||
		strings.Join(c.Lifecycle.PreStop.Exec.Command, " ") != "/troupe drain" {
		t.Fatalf("preStop %+v, want exec /troupe drain", c.Lifecycle)
	}
	if err := app.Run(context.Background(), []string{"drain", "-h"}, os.Getenv, io.Discard, io.Discard); !errors.Is(err, app.ErrHelp) {
		t.Fatalf("troupe drain -h: %v", err)
	}
	dockerfile, err := os.ReadFile("../../Dockerfile")
	if err != nil || !bytes.Contains(dockerfile, []byte(`ENTRYPOINT ["/troupe"]`)) {
		t.Fatalf("the image's binary is not /troupe: %v", err)
	}
	grace := time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	// troupe drain waits up to DRAIN_TIMEOUT; then SIGTERM leaves (5s)
	// and closes HTTP (5s).
	if min := cfg.DrainTimeout + 15*time.Second; grace < min {
		t.Errorf("terminationGracePeriodSeconds %s, want at least DRAIN_TIMEOUT %s + 15s", grace, cfg.DrainTimeout)
	}

	// The headless service joins every pod, ready or not; JOIN names it.
	var headless, client *corev1.Service
	for _, s := range m.services {
		if s.Spec.ClusterIP == corev1.ClusterIPNone {
			headless = s
		} else {
			client = s
		}
	}
	if headless == nil || client == nil {
		t.Fatal("want a headless service and a client service")
	}
	if !headless.Spec.PublishNotReadyAddresses {
		t.Error("the headless service must publish pods that are not ready: a node is ready only once it has joined")
	}
	if sts.Spec.ServiceName != headless.Name || cfg.Join != headless.Name {
		t.Errorf("serviceName %q and JOIN %q, want the headless service %q", sts.Spec.ServiceName, cfg.Join, headless.Name)
	}
	if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Error("pods must start in parallel: an ordered start waits for a first pod that is ready only once others joined")
	}
	for _, s := range m.services {
		if !labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) {
			t.Errorf("service %s does not select the pods", s.Name)
		}
		for _, p := range s.Spec.Ports {
			cp, ok := ports[p.TargetPort.String()]
			if !ok || cp.Protocol != p.Protocol || p.Port != cp.ContainerPort {
				t.Errorf("service %s port %s: target %s is not a container port of that protocol and number", s.Name, p.Name, p.TargetPort.String())
			}
		}
	}
	if len(client.Spec.Ports) != 1 || client.Spec.Ports[0].TargetPort.String() != "http" {
		t.Errorf("client service ports %+v, want http", client.Spec.Ports)
	}

	// Disruption budget and scrape annotations.
	pdb := m.pdbs[0]
	psel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil || !psel.Matches(podLabels) {
		t.Errorf("the PodDisruptionBudget does not select the pods: %v", err)
	}
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("maxUnavailable %v, want 1", pdb.Spec.MaxUnavailable)
	}
	a := pod.Annotations
	if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != strconv.Itoa(cfg.Port) || a["prometheus.io/path"] != "/metrics" {
		t.Errorf("scrape annotations %v", a)
	}

	// The layout mounted where LAYOUT_CONFIG points is a layout.
	var mounted bool
	for _, vm := range c.VolumeMounts {
		if filepath.Join(vm.MountPath, "layout.yaml") == cfg.LayoutConfig {
			mounted = true
		}
	}
	layout, ok := m.configMaps[0].Data["layout.yaml"]
	if !mounted || !ok {
		t.Fatalf("LAYOUT_CONFIG %s is not the ConfigMap's layout.yaml", cfg.LayoutConfig)
	}
	checkLayout(t, layout)
}

// checkLayout loads a layout as the node does.
func checkLayout(t *testing.T, content string) {
	t.Helper()
	p := startProcess(t, nodeEnv(nil, "LAYOUT_CONFIG", writeTemp(t, content)))
	if code, body := getStatus(t, p.url("/ready")); code != 200 {
		t.Fatalf("a node on the manifest's layout: %d %q", code, body)
	}
}
