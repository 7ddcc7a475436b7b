package engine

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

// DefaultGroupPort is the leader's group port when Group.Port is empty:
// vLLM's default --data-parallel-rpc-port, used for whichever rendezvous
// the engine needs (docs/engines.md, "Serving groups").
const DefaultGroupPort = "29550"

// VLLMMultiNode is how vLLM spans pods when one data-parallel rank's
// tensor × pipeline accelerators do not fit one pod.
type VLLMMultiNode string

// vLLM's two ways across nodes for tensor and pipeline parallelism.
const (
	// VLLMMultiNodeRay starts a Ray cluster: `ray start --head` on the
	// leader before `vllm serve ... --distributed-executor-backend ray`,
	// `ray start --address=LEADER:PORT --block` on the workers. The
	// default: it works with every vLLM release whose image has Ray.
	VLLMMultiNodeRay VLLMMultiNode = "ray"
	// VLLMMultiNodeMP uses vLLM's multiprocessing executor across nodes
	// (--nnodes, --node-rank, --master-addr, --master-port, --headless on
	// workers): no Ray, but only in vLLM releases that have these flags.
	VLLMMultiNodeMP VLLMMultiNode = "mp"
)

// Group is one pod's place in its replica's serving group. A nil Group, or
// one of an undeclared single-pod shape, gives the command line of a
// template without parallelism, unchanged.
type Group struct {
	// Shape is the replica's shape (v1alpha1.RevisionTemplate.Group).
	Shape v1alpha1.GroupShape
	// Rank is this pod's index in the group: 0 is the leader, which
	// serves the API; 1 to Shape.Pods-1 are workers.
	Rank int32
	// RankVar, when set, is a $(NAME) placeholder the runtime expands to
	// this pod's rank, such as $(LWS_WORKER_INDEX) on Kubernetes, where
	// every worker of a group shares one pod template. The command line
	// then names the rank by it, and Rank (which must be above 0) only says
	// that the pod is a worker. Only workers take one: the leader is 0.
	RankVar string
	// LeaderAddress is how the group's pods reach the leader: a host name,
	// an IP address, or a placeholder the runtime expands, such as
	// $(LWS_LEADER_ADDRESS) on Kubernetes. Required for more than one pod.
	LeaderAddress string
	// Port is the leader's group port: a number, or a $(NAME) placeholder
	// ("" = DefaultGroupPort).
	Port string
	// VLLMMultiNode picks vLLM's way across nodes for tensor and pipeline
	// parallelism ("" = VLLMMultiNodeRay).
	VLLMMultiNode VLLMMultiNode
}

// Group environment of a custom engine in a group of more than one pod.
const (
	// GroupSizeEnv holds the number of pods of the group.
	GroupSizeEnv = "KVASIR_GROUP_SIZE"
	// GroupRankEnv holds this pod's rank, 0 for the leader.
	GroupRankEnv = "KVASIR_GROUP_RANK"
	// GroupLeaderEnv holds the leader's host:port.
	GroupLeaderEnv = "KVASIR_GROUP_LEADER_ADDRESS"
)

// placeholder is a runtime's variable, as in $(LWS_LEADER_ADDRESS).
var placeholder = regexp.MustCompile(`^\$\([A-Za-z_][A-Za-z0-9_]*\)$`)

// hostChars is what a leader host may hold: names, IPv4 and IPv6 addresses
// and placeholders; nothing that reads as a flag, splits an argument or
// means something to a shell.
var hostChars = regexp.MustCompile(`^[A-Za-z0-9_.:$()\[\]-]{1,253}$`)

// grouped reports whether s's engine gets any group or parallelism flag.
func (s Spec) grouped() bool {
	return s.Group != nil && (s.Group.Shape.Declared || s.Group.Shape.Pods > 1)
}

// multiPod reports whether s's replica spans several pods.
func (s Spec) multiPod() bool { return s.Group != nil && s.Group.Shape.Pods > 1 }

// worker reports whether s is a worker pod of a group.
func (s Spec) worker() bool { return s.Group != nil && s.Group.Rank > 0 }

// validate checks that the group is a consistent shape and, for several
// pods, that the leader can be named on a command line.
func (g *Group) validate(engine v1alpha1.EngineType) error {
	if g == nil {
		return nil
	}
	sh := g.Shape
	for name, v := range map[string]int32{"tensor": sh.Tensor, "pipeline": sh.Pipeline, "data": sh.Data, "pods": sh.Pods} {
		if v < 1 || v > v1alpha1.MaxParallelSize {
			return fmt.Errorf("group: %s size %d out of 1..%d", name, v, v1alpha1.MaxParallelSize)
		}
	}
	acc := int64(sh.Tensor) * int64(sh.Pipeline) * int64(sh.Data)
	if acc != int64(sh.Accelerators) || acc%int64(sh.Pods) != 0 || int64(sh.AcceleratorsPerPod)*int64(sh.Pods) != acc {
		return fmt.Errorf("group: %d × %d × %d accelerators (%d) do not split evenly over %d pods of %d",
			sh.Tensor, sh.Pipeline, sh.Data, sh.Accelerators, sh.Pods, sh.AcceleratorsPerPod)
	}
	if !sh.Declared && (sh.Pods > 1 || acc > 1) {
		return fmt.Errorf("group: a shape of %d pods and %d accelerators without declared parallelism", sh.Pods, acc)
	}
	if sh.Expert && int64(sh.Tensor)*int64(sh.Data) < 2 {
		return fmt.Errorf("group: expert parallelism needs tensor × data > 1")
	}
	if g.Rank < 0 || g.Rank >= sh.Pods {
		return fmt.Errorf("group: rank %d out of 0..%d", g.Rank, sh.Pods-1)
	}
	if g.RankVar != "" && (g.Rank == 0 || !placeholder.MatchString(g.RankVar)) {
		return fmt.Errorf("group: rank placeholder %q: want a $(NAME) placeholder, for a worker (rank above 0) only", g.RankVar)
	}
	if sh.Pods == 1 {
		return nil
	}
	if !hostChars.MatchString(g.LeaderAddress) || g.LeaderAddress[0] == '-' {
		return fmt.Errorf("group: leader address %q: want a host name, an IP address or a $(NAME) placeholder", g.LeaderAddress)
	}
	if g.Port != "" && !placeholder.MatchString(g.Port) {
		if p, err := strconv.Atoi(g.Port); err != nil || p < 1 || p > 65535 || strconv.Itoa(p) != g.Port {
			return fmt.Errorf("group: port %q: want 1..65535 or a $(NAME) placeholder", g.Port)
		}
	}
	switch g.VLLMMultiNode {
	case "", VLLMMultiNodeRay, VLLMMultiNodeMP:
	default:
		return fmt.Errorf("group: unknown vLLM multi-node mode %q", g.VLLMMultiNode)
	}
	if engine == v1alpha1.EngineVLLM && sh.Data > 1 && sh.Data%sh.Pods != 0 {
		return fmt.Errorf("group: vLLM runs whole data-parallel ranks on each pod: data %d is not a multiple of %d pods", sh.Data, sh.Pods)
	}
	return nil
}

// port is the group port.
func (g *Group) port() string {
	if g.Port == "" {
		return DefaultGroupPort
	}
	return g.Port
}

// leader is the leader's host:port.
func (g *Group) leader() string { return net.JoinHostPort(g.LeaderAddress, g.port()) }

// rank is this pod's rank on the command line: RankVar when set.
func (g *Group) rank() string {
	if g.RankVar != "" {
		return g.RankVar
	}
	return itoa(g.Rank)
}

// dpStartRankScript appends vLLM's --data-parallel-start-rank, rank ($1) ×
// data-parallel ranks per pod ($2), to the command line in its other
// arguments, for a worker whose rank is only known as a placeholder the
// runtime expands ($(LWS_WORKER_INDEX)): the one product Kubernetes'
// expansion cannot compute. The rank must be digits (an unexpanded
// placeholder is refused before any arithmetic); nothing of the template
// is in the script itself.
const dpStartRankScript = `case "$1" in ''|*[!0-9]*) echo "kvasir: group rank '$1' is not a number" >&2; exit 2;; esac; ` +
	`r=$(($1 * $2)); shift 2; exec "$@" --data-parallel-start-rank "$r"`

// vllmDPStartRank wraps a vLLM worker whose rank is a placeholder and whose
// pod holds several data-parallel ranks in dpStartRankScript.
func vllmDPStartRank(s Spec, l Launch) Launch {
	g := s.Group
	local := g.Shape.Data / g.Shape.Pods
	l.Command = append([]string{"/bin/sh", "-c", dpStartRankScript, "kvasir-dp-rank", g.RankVar, itoa(local)}, l.Command...)
	return l
}

// vllmNeedsDPStartRank reports whether s's vLLM worker computes its first
// data-parallel rank at run time (vllmDPStartRank).
func vllmNeedsDPStartRank(s Spec) bool {
	g := s.Group
	return s.worker() && g.RankVar != "" && g.Shape.Data > 1 && g.Shape.Data/g.Shape.Pods > 1
}

// itoa formats a size.
func itoa(v int32) string { return strconv.Itoa(int(v)) }

// vllmGroupArgs are vLLM's parallelism flags and, in a group, the flags of
// this pod's rank: data parallelism over nodes when every pod holds whole
// data-parallel ranks, else the multiprocessing executor across nodes
// (VLLMMultiNodeMP). Ray's command lines are built by vllmRay.
func vllmGroupArgs(s Spec) []string {
	g := s.Group
	sh := g.Shape
	args := []string{"--tensor-parallel-size", itoa(sh.Tensor), "--pipeline-parallel-size", itoa(sh.Pipeline),
		"--data-parallel-size", itoa(sh.Data)}
	if sh.Expert {
		args = append(args, "--enable-expert-parallel")
	}
	if sh.Pods == 1 {
		return args
	}
	switch {
	case sh.Data > 1:
		local := sh.Data / sh.Pods
		args = append(args, "--data-parallel-size-local", itoa(local))
		switch {
		case g.Rank > 0 && g.RankVar == "":
			args = append(args, "--data-parallel-start-rank", itoa(g.Rank*local))
		case g.Rank > 0 && local == 1:
			args = append(args, "--data-parallel-start-rank", g.RankVar)
		}
		// A placeholder rank over several local ranks: vllmDPStartRank.
		args = append(args, "--data-parallel-address", g.LeaderAddress, "--data-parallel-rpc-port", g.port())
	case g.VLLMMultiNode == VLLMMultiNodeMP:
		args = append(args, "--nnodes", itoa(sh.Pods), "--node-rank", g.rank(),
			"--master-addr", g.LeaderAddress, "--master-port", g.port())
	default:
		return args // Ray: vllmRay
	}
	if g.Rank > 0 {
		args = append(args, "--headless")
	}
	return args
}

// vllmNeedsRay reports whether s's vLLM group starts a Ray cluster: its
// data-parallel ranks (one, or fewer than pods) span pods, and the group
// did not ask for the multiprocessing executor.
func vllmNeedsRay(s Spec) bool {
	return s.multiPod() && s.Group.Shape.Data == 1 && s.Group.VLLMMultiNode != VLLMMultiNodeMP
}

// rayLeaderScript starts Ray's head on the port in $1, then runs the rest
// of its arguments (vllm serve ...). Nothing of the template is in the
// script itself: the port and the command line are arguments.
const rayLeaderScript = `ray start --head --port="$1" && shift && exec "$@"`

// vllmRay turns the leader's vLLM launch l into Ray's head start followed
// by vllm serve with the Ray executor, and gives a worker Ray's worker
// start instead of vLLM, which the head's Ray places its processes on.
func vllmRay(s Spec, l Launch) Launch {
	g := s.Group
	if g.Rank > 0 {
		return Launch{Command: []string{"ray", "start", "--address=" + g.leader(), "--block"}}
	}
	l.Command = append([]string{"/bin/sh", "-c", rayLeaderScript, "kvasir-ray-head", g.port()}, l.Command...)
	l.Args = append(l.Args, "--distributed-executor-backend", "ray")
	return l
}

// sglangGroupArgs are SGLang's parallelism flags and, in a group, the
// flags of this pod's rank. SGLang's data parallelism inside one server is
// data-parallel attention: --tp-size counts every rank (tensor × data) and
// --dp-size the attention groups; experts go over all of them.
func sglangGroupArgs(s Spec) []string {
	g := s.Group
	sh := g.Shape
	tp := itoa(sh.Tensor * sh.Data)
	args := []string{"--tp-size", tp, "--pp-size", itoa(sh.Pipeline), "--dp-size", itoa(sh.Data)}
	if sh.Data > 1 {
		args = append(args, "--enable-dp-attention")
	}
	if sh.Expert {
		args = append(args, "--ep-size", tp)
	}
	if sh.Pods > 1 {
		args = append(args, "--nnodes", itoa(sh.Pods), "--node-rank", g.rank(), "--dist-init-addr", g.leader())
	}
	return args
}

// simGroupArgs are the simulator's parallelism flags (vLLM's names) and,
// in a group, its rank, the group's size and the leader's address.
func simGroupArgs(s Spec) []string {
	g := s.Group
	sh := g.Shape
	args := []string{"--tensor-parallel-size", itoa(sh.Tensor), "--pipeline-parallel-size", itoa(sh.Pipeline),
		"--data-parallel-size", itoa(sh.Data)}
	if sh.Expert {
		args = append(args, "--enable-expert-parallel")
	}
	if sh.Pods > 1 {
		args = append(args, "--group-size", itoa(sh.Pods), "--rank", g.rank(), "--leader-address", g.leader())
		if strings.HasPrefix(g.LeaderAddress, "$(") {
			// A leader named by the runtime (Kubernetes: LWS_LEADER_ADDRESS)
			// is another pod: the group is not on loopback.
			args = append(args, "--group-remote")
		}
	}
	return args
}

// customGroupEnv is a custom engine's group environment.
func customGroupEnv(s Spec) []corev1.EnvVar {
	if !s.multiPod() {
		return nil
	}
	g := s.Group
	return []corev1.EnvVar{{Name: GroupSizeEnv, Value: itoa(g.Shape.Pods)}, {Name: GroupRankEnv, Value: g.rank()},
		{Name: GroupLeaderEnv, Value: g.leader()}}
}
