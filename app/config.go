package app

import (
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/troupe-llm/troupe/cluster"
	"github.com/troupe-llm/troupe/gateway"
)

// config is every setting of a node. Each is a flag and an environment
// variable; the flag wins. The Python original's variable names keep their
// meaning.
type Config struct {
	AgentEndpoint string
	LLMName       string
	PublicAddress string
	BindAddress   string
	Port          int
	Endpoint      string
	LayoutConfig  string
	IgnoreAgent   bool
	RetryCount    int
	Debug         bool
	ChatTimeout   time.Duration
	Limits        gateway.Limits
	DrainTimeout  time.Duration
	AgentRefresh  time.Duration

	NodeName   string
	GossipPort int
	RemotePort int
	Join       string
	ClusterKey string
	TLSCert    string
	TLSKey     string
	TLSCA      string

	APIKeys     string
	APIKeysFile string
	LogFormat   string

	// set holds the environment names of the settings given explicitly,
	// by flag or environment; the others have their defaults.
	set map[string]bool
}

// IsSet reports whether the setting with environment name env was given.
func (c Config) IsSet(env string) bool { return c.set[env] }

// defaultPort is the port a node listens on when PORT is not set.
const defaultPort = 8123

// setting is one row of the configuration table, which is also what
// `troupe -h` prints and docs/configuration.md shows (a test keeps them
// equal). def describes the default when the value's own is not it.
type setting struct {
	flag, env, def, usage string
	value                 flag.Value
}

// SettingNames are the environment variables of every setting, in the
// order `troupe -h` prints them.
func SettingNames() []string {
	var c Config
	var names []string
	for _, s := range settings(&c) {
		names = append(names, s.env)
	}
	return names
}

func settings(c *Config) []setting {
	return []setting{
		{"agent-endpoint", "AGENT_ENDPOINT", "", "the Agent's API base URL", (*stringValue)(&c.AgentEndpoint)},
		{"llm-name", "LLM_NAME", "", "the LLM name (access code) the node serves and registers", (*stringValue)(&c.LLMName)},
		{"public-address", "PUBLIC_ADDRESS", "localhost; this host's own IP when BIND_ADDRESS is 0.0.0.0", "the host the Agent and other nodes reach this node at", (*stringValue)(&c.PublicAddress)},
		{"bind-address", "BIND_ADDRESS", "127.0.0.1 when the public address is loopback, else 0.0.0.0", "the IP every listener binds: HTTP, gossip, remote", (*stringValue)(&c.BindAddress)},
		{"port", "PORT", "", "the HTTP port; 0 picks a free one (printed at start-up)", (*intValue)(&c.Port)},
		{"endpoint", "ENDPOINT", "", "the path of the chat endpoint", (*stringValue)(&c.Endpoint)},
		{"layout", "LAYOUT_CONFIG", "the built-in example layout", "the layout file", (*stringValue)(&c.LayoutConfig)},
		{"ignore-agent", "IGNORE_AGENT", "", "do not register with the Agent", (*boolValue)(&c.IgnoreAgent)},
		{"retry-count", "RETRY_COUNT", "", "failed registration rounds before the Agent client reports failed (it keeps trying, backing off from 1s to 30s)", (*intValue)(&c.RetryCount)},
		{"debug", "DEBUG", "", "log at debug level, chat content included", (*boolValue)(&c.Debug)},
		{"log-format", "LOG_FORMAT", "", "log lines as text (key=value) or json (one object a line)", (*stringValue)(&c.LogFormat)},
		{"chat-timeout", "CHAT_TIMEOUT", "", "the longest a chat may run", (*durationValue)(&c.ChatTimeout)},
		{"max-body-bytes", "MAX_BODY_BYTES", "", "the largest chat request body (form or JSON), in bytes or with KiB, MiB; larger ones are refused with 413", (*sizeValue)(&c.Limits.MaxBodyBytes)},
		{"max-history-messages", "MAX_HISTORY_MESSAGES", "", "the most messages a chat's history may hold; more are refused with 413", (*countValue)(&c.Limits.MaxHistoryMessages)},
		{"max-history-bytes", "MAX_HISTORY_BYTES", "", "the most text a chat's history may hold, all messages together; more is refused with 413", (*sizeValue)(&c.Limits.MaxHistoryBytes)},
		{"max-answer-bytes", "MAX_ANSWER_BYTES", "", "the longest answer: one that reaches it is cut there (OpenAI's finish_reason length) and its generation stopped", (*sizeValue)(&c.Limits.MaxAnswerBytes)},
		{"max-header-bytes", "MAX_HEADER_BYTES", "", "the largest request head (431 past it)", (*sizeValue)(&c.Limits.MaxHeaderBytes)},
		{"max-connections", "MAX_CONNECTIONS", "", "the most HTTP connections open at once: at the limit the one waiting longest without a request served makes room for a new one, which is refused with 503 when all are serving", (*countValue)(&c.Limits.MaxConnections)},
		{"header-timeout", "HEADER_TIMEOUT", "", "how long a request's head may take to arrive", (*durationValue)(&c.Limits.HeaderTimeout)},
		{"body-timeout", "BODY_TIMEOUT", "", "how long a whole request, head and body, may take to arrive (408 after); answers are bounded by CHAT_TIMEOUT", (*durationValue)(&c.Limits.BodyTimeout)},
		{"idle-timeout", "IDLE_TIMEOUT", "", "how long a kept-alive connection may wait for its next request", (*durationValue)(&c.Limits.IdleTimeout)},
		{"drain-timeout", "DRAIN_TIMEOUT", "", "how long a drain (SIGTERM, or troupe drain) waits for the chats in flight", (*durationValue)(&c.DrainTimeout)},
		{"agent-refresh", "AGENT_REFRESH", "", "how often registrations with the Agent are renewed (an Agent that restarted learns the node again)", (*durationValue)(&c.AgentRefresh)},
		{"node-name", "NODE_NAME", "hostname-gossipport", "the node's name in the cluster", (*stringValue)(&c.NodeName)},
		{"gossip-port", "GOSSIP_PORT", "7946; a free port when 7946 is taken", "the cluster membership (memberlist) port, TCP and UDP; 0 picks a free one", (*intValue)(&c.GossipPort)},
		{"remote-port", "REMOTE_PORT", "7947; a free port when 7947 is taken", "the port chats and chunks travel between nodes on (gRPC); 0 picks a free one", (*intValue)(&c.RemotePort)},
		{"join", "JOIN", "none", "comma-separated gossip addresses of members to join (host or host:port); a DNS name stands for all its addresses", (*stringValue)(&c.Join)},
		{"cluster-key", "CLUSTER_KEY", "none: gossip and the node-to-node link are open", "encrypts gossip and locks the node-to-node link (mutual TLS from a CA derived from the key): base64 of a 16, 24 or 32 byte key, or a passphrase of 12+ characters", (*stringValue)(&c.ClusterKey)},
		{"tls-cert", "TLS_CERT", "none", "this node's certificate (PEM) for the node-to-node link, with TLS_KEY and TLS_CA: used instead of the CA derived from CLUSTER_KEY", (*stringValue)(&c.TLSCert)},
		{"tls-key", "TLS_KEY", "none", "the private key (PEM) of TLS_CERT", (*stringValue)(&c.TLSKey)},
		{"tls-ca", "TLS_CA", "none", "the CA certificate (PEM) every node's certificate must be signed by", (*stringValue)(&c.TLSCA)},
		{"api-keys", "API_KEYS", "none: the API is open", "comma-separated Bearer keys the OpenAI-compatible API requires", (*stringValue)(&c.APIKeys)},
		{"api-keys-file", "API_KEYS_FILE", "none", "a file of Bearer keys for the OpenAI-compatible API, one a line (# starts a comment); a file does not show in ps", (*stringValue)(&c.APIKeysFile)},
	}
}

// defaultText is how a setting's default is shown.
func (s setting) defaultText() string {
	if s.def != "" {
		return s.def
	}
	return s.value.String()
}

// usage prints `troupe -h`: the subcommands, then every setting with its
// environment variable and default (this is the table of
// docs/configuration.md).
func usage(w io.Writer, all []setting) {
	fmt.Fprint(w, `Usage:
  troupe [flags]                 run a node
  troupe health [-live] [-url U] exit 0 when the node (PORT, BIND_ADDRESS) is ready; -live: up
  troupe drain [-url U]          drain the node on this host (Kubernetes preStop)
  troupe version                 print the version

Every setting is a flag and an environment variable; the flag wins.

`)
	for _, s := range all {
		fmt.Fprintf(w, "  -%s  %s  default: %s\n      %s\n", s.flag, s.env, s.defaultText(), s.usage)
	}
}

func DefaultConfig() Config {
	return Config{
		AgentEndpoint: "http://localhost:9000/v1.0/",
		LLMName:       "Unnamed_LLM",
		PublicAddress: "localhost",
		Port:          defaultPort,
		Endpoint:      "/v1/completion",
		RetryCount:    5,
		ChatTimeout:   10 * time.Minute,
		Limits:        gateway.DefaultLimits(),
		DrainTimeout:  30 * time.Second,
		AgentRefresh:  15 * time.Second,
		GossipPort:    cluster.DefaultGossipPort,
		RemotePort:    cluster.DefaultRemotePort,
		LogFormat:     "text",
		set:           map[string]bool{},
	}
}

// parseConfig reads the environment, then the flags over it.
func ParseConfig(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	c := DefaultConfig()
	fs := flag.NewFlagSet("troupe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	all := settings(&c)
	envOf := map[string]string{}
	for _, s := range all {
		if v := getenv(s.env); v != "" {
			if err := s.value.Set(v); err != nil {
				return c, fmt.Errorf("%s=%q: %w", s.env, v, err)
			}
			c.set[s.env] = true
		}
		fs.Var(s.value, s.flag, s.usage)
		envOf[s.flag] = s.env
	}
	dc := DefaultConfig()
	defaults := settings(&dc)
	fs.Usage = func() { usage(fs.Output(), defaults) }
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	fs.Visit(func(f *flag.Flag) { c.set[envOf[f.Name]] = true })
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q (settings are flags such as -port 8123)", fs.Arg(0))
	}
	for _, p := range []struct {
		name string
		port int
	}{{"port", c.Port}, {"gossip port", c.GossipPort}, {"remote port", c.RemotePort}} {
		if p.port < 0 || p.port > 65535 {
			return c, fmt.Errorf("%s %d: want 0 to 65535", p.name, p.port)
		}
	}
	if c.BindAddress == "" {
		c.BindAddress = defaultBind(c.PublicAddress)
	}
	bind := net.ParseIP(c.BindAddress)
	if bind == nil {
		return c, fmt.Errorf("BIND_ADDRESS %q: want an IP address", c.BindAddress)
	}
	// A node that listens on every interface (in a container, say) and was
	// not told its address announces its own, not "localhost", which the
	// Agent and the other nodes would take for themselves.
	if bind.IsUnspecified() && !c.IsSet("PUBLIC_ADDRESS") {
		if ip := ownIP(); ip != "" {
			c.PublicAddress = ip
		}
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return c, fmt.Errorf("LOG_FORMAT=%q: want text or json", c.LogFormat)
	}
	if strings.TrimSpace(c.LLMName) == "" {
		return c, fmt.Errorf("LLM name is empty")
	}
	if err := c.checkTLSFiles(); err != nil {
		return c, err
	}
	return c, nil
}

// checkTLSFiles wants the three TLS files together or none of them.
func (c Config) checkTLSFiles() error {
	var missing []string
	for _, f := range []struct{ env, path string }{{"TLS_CERT", c.TLSCert}, {"TLS_KEY", c.TLSKey}, {"TLS_CA", c.TLSCA}} {
		if f.path == "" {
			missing = append(missing, f.env)
		}
	}
	if len(missing) == 0 || len(missing) == 3 {
		return nil
	}
	return fmt.Errorf("TLS_CERT, TLS_KEY and TLS_CA go together, all three or none: %s not set", strings.Join(missing, " and "))
}

// apiKeys reads the OpenAI API's keys from the setting and the file.
func (c Config) apiKeys() ([]string, error) {
	keys := splitList(c.APIKeys)
	if c.APIKeysFile == "" {
		return keys, nil
	}
	data, err := os.ReadFile(c.APIKeysFile)
	if err != nil {
		return nil, fmt.Errorf("API_KEYS_FILE: %w", err)
	}
	n := len(keys)
	for _, line := range strings.Split(string(data), "\n") {
		line, _, _ = strings.Cut(line, "#")
		if line = strings.TrimSpace(line); line != "" {
			keys = append(keys, line)
		}
	}
	if len(keys) == n {
		return nil, fmt.Errorf("API_KEYS_FILE %s holds no key", c.APIKeysFile)
	}
	return keys, nil
}

// defaultBind listens where the node said it can be reached: on loopback
// only when its public address is loopback, so that a node started with the
// defaults is not open to the network.
func defaultBind(public string) string {
	if public == "localhost" {
		return "127.0.0.1"
	}
	if ip := net.ParseIP(public); ip != nil && ip.IsLoopback() {
		return public
	}
	return "0.0.0.0"
}

// ownIP returns this host's first IPv4 address that is not loopback, on an
// interface that is up, or "" when there is none.
func ownIP() string {
	ifaces, err := net.Interfaces()
	if err != nil {
		return ""
	}
	for _, iface := range ifaces {
		if iface.Flags&net.FlagUp == 0 || iface.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := iface.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
				return n.IP.String()
			}
		}
	}
	return ""
}

type stringValue string

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }

type intValue int

func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("want a whole number")
	}
	*v = intValue(n)
	return nil
}
func (v *intValue) String() string { return strconv.Itoa(int(*v)) }

type boolValue bool

// Set accepts what the Python original's users write: 1/0, true/false,
// yes/no, on/off.
func (v *boolValue) Set(s string) error {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "true", "yes", "on", "t", "y":
		*v = true
	case "0", "false", "no", "off", "f", "n", "":
		*v = false
	default:
		return fmt.Errorf("want true or false")
	}
	return nil
}
func (v *boolValue) String() string   { return strconv.FormatBool(bool(*v)) }
func (v *boolValue) IsBoolFlag() bool { return true }

// countValue is a whole number of at least 1.
type countValue int

func (v *countValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 {
		return fmt.Errorf("want a whole number of at least 1")
	}
	*v = countValue(n)
	return nil
}
func (v *countValue) String() string { return strconv.Itoa(int(*v)) }

// sizeValue is a positive number of bytes, written plain or with a unit:
// 65536, 64KiB, 8MiB, 1GiB.
type sizeValue int64

var sizeUnits = []struct {
	suffix string
	shift  uint
}{{"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"B", 0}, {"", 0}}

func (v *sizeValue) Set(s string) error {
	s = strings.TrimSpace(s)
	for _, u := range sizeUnits {
		num, ok := strings.CutSuffix(s, u.suffix)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
		if err != nil || n < 1 || n > math.MaxInt64>>u.shift {
			break
		}
		*v = sizeValue(n << u.shift)
		return nil
	}
	return fmt.Errorf("want a size such as 65536, 64KiB or 8MiB")
}

func (v *sizeValue) String() string {
	n := int64(*v)
	for _, u := range sizeUnits[:3] {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

type durationValue time.Duration

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d <= 0 {
		return fmt.Errorf("want a positive duration such as 30s")
	}
	*v = durationValue(d)
	return nil
}

// String drops zero minutes and seconds: 10m, not 10m0s.
func (v *durationValue) String() string {
	s := time.Duration(*v).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
