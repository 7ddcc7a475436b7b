package main

import (
	"context"

	"flag"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/local"
)

// fragRole is one ModelService of a scenario: its name and its
// spec.template (YAML flow style, engine sim).
type fragRole struct{ name, template string }

// fragStep is a scenario's demand at one moment: groups wanted per role
// (absent: 0), decided at once in one scaling pass.
type fragStep struct {
	demand map[string]int
	note   string
}

// fragScenario is a fixed inventory, its roles and a sequence of demands.
type fragScenario struct {
	name, about string
	// inventory is what autoscaler.Place sees (kvasir local
	// --accelerators); nodes is the same devices as nodes, for the node
	// columns (what Kubernetes' scheduler places pods on).
	inventory string
	nodes     []node
	roles     []fragRole
	steps     []fragStep
}

func gpuNodes(sizes ...int) []node {
	out := make([]node, len(sizes))
	for i, s := range sizes {
		out[i] = node{"nvidia.com/gpu": s}
	}
	return out
}

// fragScenarios are small enough for the exhaustive search.
var fragScenarios = []fragScenario{
	{
		name:      "arrivals 2, 4, 8",
		about:     "groups of 2, 4 and 8 accelerators arrive one size after the other, then the small one shrinks",
		inventory: "nvidia.com/gpu=16", nodes: gpuNodes(8, 8),
		roles: []fragRole{
			{"tp2", `{parallelism: {tensor: 2}, acceleratorsPerNode: 2, resources: {limits: {nvidia.com/gpu: "2"}}}`},
			{"tp4", `{parallelism: {tensor: 4}, acceleratorsPerNode: 2, resources: {limits: {nvidia.com/gpu: "2"}}}`},
			{"tp8", `{parallelism: {tensor: 8}, acceleratorsPerNode: 4, resources: {limits: {nvidia.com/gpu: "4"}}}`},
		},
		steps: []fragStep{
			{demand: map[string]int{"tp2": 3}},
			{demand: map[string]int{"tp2": 3, "tp4": 2}},
			{demand: map[string]int{"tp2": 3, "tp4": 2, "tp8": 1}, note: "tp8 finds 2 free"},
			{demand: map[string]int{"tp2": 1, "tp4": 2, "tp8": 1}, note: "tp2 shrinks: 6 free, still not 8"},
		},
	},
	{
		name:      "two roles wake together",
		about:     "a 12-accelerator group (TP 4 x PP 3) and 8-accelerator groups wake from zero in the same pass",
		inventory: "nvidia.com/gpu=16", nodes: gpuNodes(8, 8),
		roles: []fragRole{
			{"a-pp3", `{parallelism: {tensor: 4, pipeline: 3}, acceleratorsPerNode: 4, resources: {limits: {nvidia.com/gpu: "4"}}}`},
			{"b-tp8", `{parallelism: {tensor: 8}, acceleratorsPerNode: 4, resources: {limits: {nvidia.com/gpu: "4"}}}`},
		},
		steps: []fragStep{
			{demand: map[string]int{"a-pp3": 1, "b-tp8": 2}, note: "equal priority: placed in name order"},
			{demand: map[string]int{"b-tp8": 2}, note: "a-pp3 goes to zero: shrinking is placed first"},
		},
	},
	{
		name:      "cheapest variant first",
		about:     "flex runs on either vendor (nvidia cheaper), nvonly only on nvidia; flex arrives first",
		inventory: "nvidia.com/gpu=8,amd.com/gpu=8", nodes: []node{{"nvidia.com/gpu": 8}, {"amd.com/gpu": 8}},
		roles: []fragRole{
			{"flex", `{parallelism: {tensor: 4}, acceleratorsPerNode: 2, accelerators: [` +
				`{name: nv, cost: 1, resources: {limits: {nvidia.com/gpu: "2"}}}, ` +
				`{name: mi, cost: 2, resources: {limits: {amd.com/gpu: "2"}}}]}`},
			{"nvonly", `{parallelism: {tensor: 8}, acceleratorsPerNode: 8, resources: {limits: {nvidia.com/gpu: "8"}}}`},
		},
		steps: []fragStep{
			{demand: map[string]int{"flex": 2}},
			{demand: map[string]int{"flex": 2, "nvonly": 1}, note: "flex holds nvidia; amd idle"},
		},
	},
	{
		name:      "shrink and grow in one pass",
		about:     "one 8-accelerator role gives a group to another in the same pass",
		inventory: "nvidia.com/gpu=16", nodes: gpuNodes(8, 8),
		roles: []fragRole{
			{"a-tp8", `{parallelism: {tensor: 8}, acceleratorsPerNode: 4, resources: {limits: {nvidia.com/gpu: "4"}}}`},
			{"b-tp8", `{parallelism: {tensor: 8}, acceleratorsPerNode: 4, resources: {limits: {nvidia.com/gpu: "4"}}}`},
		},
		steps: []fragStep{
			{demand: map[string]int{"a-tp8": 2}},
			{demand: map[string]int{"a-tp8": 1, "b-tp8": 1}},
		},
	},
	{
		name:      "a pool summed over nodes",
		about:     "2 nodes of 8 where other pods hold 3 on each: 10 free in all, 5 per node (Kubernetes' FreeAccelerators sums them)",
		inventory: "nvidia.com/gpu=10", nodes: gpuNodes(5, 5),
		roles: []fragRole{
			{"big", `{parallelism: {tensor: 8}, acceleratorsPerNode: 8, resources: {limits: {nvidia.com/gpu: "8"}}}`},
			{"grp", `{parallelism: {tensor: 8}, acceleratorsPerNode: 4, resources: {limits: {nvidia.com/gpu: "4"}}}`},
		},
		steps: []fragStep{
			{demand: map[string]int{"big": 1}, note: "one pod of 8"},
			{demand: map[string]int{"big": 1, "grp": 1}, note: "2 pods of 4"},
		},
	},
}

// loadRoles reads a scenario's roles as kvasir local does (defaults,
// validation) and returns their placement variants.
func loadRoles(roles []fragRole) ([]packRole, error) {
	var b strings.Builder
	for _, r := range roles {
		fmt.Fprintf(&b, "---\napiVersion: serving.kvasir.dev/v1alpha1\nkind: ModelService\nmetadata: {name: %s}\nspec:\n  template: %s\n",
			r.name, strings.Replace(r.template, "{", "{engine: {type: sim}, ", 1))
	}
	svcs, err := local.Load("scenario", []byte(b.String()))
	if err != nil {
		return nil, err
	}
	out := make([]packRole, len(svcs))
	for i, ms := range svcs {
		out[i] = packRole{Name: ms.Name, Variants: autoscaler.RoleVariantsOf(&ms.Spec.Template, fleet.RoleUnified)}
	}
	return out, nil
}

// fragFleet applies placements the way local mode's process runtime
// does, at once: a group's devices are allocated from the inventory whole
// (autoscaler.Inventory.Allocate) and split over its pods
// (autoscaler.SplitAllocation), and a group removed gives them back.
type fragFleet struct {
	inv      *autoscaler.Inventory
	variants map[fleet.Key][]autoscaler.Variant
	running  map[fleet.Key]map[string][]string // variant → replica names, oldest first
	held     map[string]int                    // replica → devices it holds
	seq      int
	// errs are placements that could not be applied: a group placed that
	// did not fit.
	errs []error
}

var _ fleet.VariantScaler = (*fragFleet)(nil)

// ScaleVariants implements fleet.VariantScaler: the newest groups go
// first, as in the process runtime.
func (f *fragFleet) ScaleVariants(_ context.Context, key fleet.Key, counts map[string]int) error {
	for _, v := range f.variants[key] {
		names := f.running[key][v.Name]
		for len(names) > counts[v.Name] {
			last := names[len(names)-1]
			f.inv.Release(last)
			delete(f.held, last)
			names = names[:len(names)-1]
		}
		for len(names) < counts[v.Name] {
			f.seq++
			name := key.Service + "-" + strconv.Itoa(f.seq)
			alloc, err := f.inv.Allocate(name, v.Need)
			if err != nil {
				err = fmt.Errorf("%s: a group placed on variant %q does not fit: %w", key.Service, v.Name, err)
				f.errs = append(f.errs, err)
				f.running[key][v.Name] = names
				return err
			}
			if _, err := autoscaler.SplitAllocation(alloc, max(v.Pods, 1)); err != nil {
				f.errs = append(f.errs, fmt.Errorf("%s: %w", key.Service, err))
			}
			n := 0
			for _, idx := range alloc {
				n += len(idx)
			}
			f.held[name] = n
			names = append(names, name)
		}
		f.running[key][v.Name] = names
	}
	return nil
}

// counts returns the groups running per role and variant, in the order
// of roles.
func (f *fragFleet) counts(keys []fleet.Key) [][]int {
	out := make([][]int, len(keys))
	for r, key := range keys {
		for _, v := range f.variants[key] {
			out[r] = append(out[r], len(f.running[key][v.Name]))
		}
	}
	return out
}

// fragObserver hands the pass each role with the step's demand as an
// override of its decision: the scenario decides how many groups are
// wanted, the real pass orders the roles and places them.
type fragObserver struct {
	fleet  *fragFleet
	roles  []*autoscaler.Role
	demand map[fleet.Key]int
}

func (o *fragObserver) Observe(context.Context, time.Time) ([]autoscaler.Observed, error) {
	out := make([]autoscaler.Observed, 0, len(o.roles))
	for _, r := range o.roles {
		vs := slices.Clone(o.fleet.variants[r.Key])
		ready := 0
		for i := range vs {
			vs[i].Need = maps.Clone(vs[i].Need)
			vs[i].Current = len(o.fleet.running[r.Key][vs[i].Name])
			ready += vs[i].Current
		}
		dec := autoscaler.Decision{Desired: o.demand[r.Key], Reason: "the scenario's demand"}
		out = append(out, autoscaler.Observed{Role: r, Observation: autoscaler.Observation{Ready: ready, Variants: vs, Override: &dec}})
	}
	return out, nil
}

// nopReporter ignores what the pass says.
type nopReporter struct{}

func (nopReporter) Decided(*autoscaler.Role, autoscaler.Signals, autoscaler.Decision) {}
func (nopReporter) Placing(*autoscaler.Result)                                        {}
func (nopReporter) Placed(*autoscaler.Result)                                         {}

// fragRow is one step's outcome.
type fragRow struct {
	demand                []int
	placed                [][]int
	kvasir                cell
	keep, repack, onNodes cell
	kvasirFitsNodes       bool
	violations            []string
}

// cell is a placement's idle accelerators and the groups it leaves
// pending.
type cell struct{ idle, pending int }

func (c cell) String() string { return fmt.Sprintf("%d / %d", c.idle, c.pending) }

// stranded is the idle accelerators while a group is pending.
func (c cell) stranded() int {
	if c.pending > 0 {
		return c.idle
	}
	return 0
}

func fragmentation(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("fragmentation", flag.ContinueOnError)
	passes := fs.Int("passes", 3, "scaling passes per step (the runtime here applies a placement at once, so 1 settles)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *passes < 1 {
		return fmt.Errorf("--passes %d: want at least 1", *passes)
	}
	fmt.Println("Fragmentation: autoscaler.Pass (observe, Priority, Place) on a real autoscaler.Inventory, against the best packing found exhaustively.")
	fmt.Println("Cells are \"idle accelerators / groups pending\". keep: the best that keeps the groups already running (Kvasir never migrates one);")
	fmt.Println("repack: the best from scratch; nodes: the same devices as nodes, each pod whole on one node (the count model sums nodes).")
	fmt.Println("Kvasir placed: groups per role, per accelerator variant cheapest first (\"2+0\").")
	var failed []string
	var summary []string
	for i, sc := range fragScenarios {
		if err := ctx.Err(); err != nil {
			return err
		}
		rows, roles, err := runScenario(ctx, sc, *passes)
		if err != nil {
			return fmt.Errorf("scenario %q: %w", sc.name, err)
		}
		printScenario(i+1, sc, roles, rows)
		w := worstStep(rows)
		r := rows[w]
		summary = append(summary, fmt.Sprintf("%d. %s\t%d\t%d\t%d\t%d\t%d\t%s", i+1, sc.name, w+1, r.kvasir.stranded(), r.keep.stranded(),
			r.repack.stranded(), r.onNodes.stranded(), yesNo(r.kvasirFitsNodes)))
		for s, r := range rows {
			for _, v := range r.violations {
				failed = append(failed, fmt.Sprintf("scenario %q step %d: %s", sc.name, s+1, v))
			}
		}
	}
	fmt.Println()
	fmt.Println("Stranded accelerators (idle while a group is pending) at each scenario's worst step for Kvasir against the best repacking:")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tstep\tKvasir\tbest, keep running\tbest, repack\tbest on nodes\tKvasir's placement fits the nodes")
	for _, l := range summary {
		fmt.Fprintln(tw, l)
	}
	_ = tw.Flush()
	if len(failed) > 0 {
		for _, f := range failed {
			fmt.Fprintln(os.Stderr, "VIOLATION:", f)
		}
		return fmt.Errorf("%d invariant(s) broken", len(failed))
	}
	fmt.Println("\nno invariant broken: every placed group got its devices whole, no pending group fitted what was left free, and no packing beat the exhaustive best")
	return nil
}

// runScenario drives the real pass through a scenario's steps.
func runScenario(ctx context.Context, sc fragScenario, passes int) ([]fragRow, []packRole, error) {
	roles, err := loadRoles(sc.roles)
	if err != nil {
		return nil, nil, err
	}
	inv, err := autoscaler.ParseInventory(sc.inventory)
	if err != nil {
		return nil, nil, err
	}
	f := &fragFleet{inv: inv, variants: map[fleet.Key][]autoscaler.Variant{}, running: map[fleet.Key]map[string][]string{}, held: map[string]int{}}
	obs := &fragObserver{fleet: f}
	keys := make([]fleet.Key, len(roles))
	now := time.Now()
	for i, r := range roles {
		keys[i] = fleet.Key{Namespace: "default", Service: r.Name, Revision: r.Name + "-00001"}
		f.variants[keys[i]] = r.Variants
		f.running[keys[i]] = map[string][]string{}
		d, err := autoscaler.NewDecider(autoscaler.Config{MaxScale: 0}, now)
		if err != nil {
			return nil, nil, err
		}
		obs.roles = append(obs.roles, &autoscaler.Role{Key: keys[i], Decider: d})
	}
	pass := autoscaler.Pass{Observer: obs, Capacity: inv, Scaler: f, Reporter: nopReporter{}}
	countNodes := countModel([]node{inventoryNode(inv)})
	var rows []fragRow
	prev := f.counts(keys)
	for _, st := range sc.steps {
		obs.demand = map[fleet.Key]int{}
		demand := make([]int, len(roles))
		for i, r := range roles {
			demand[i] = st.demand[r.Name]
			obs.demand[keys[i]] = demand[i]
		}
		f.errs = nil
		for range passes {
			now = now.Add(time.Second)
			res, err := pass.Run(ctx, now)
			if err != nil {
				return nil, nil, err
			}
			if !slices.ContainsFunc(res, func(r *autoscaler.Result) bool { return r.Changed }) {
				break
			}
		}
		row := fragRow{demand: demand, placed: f.counts(keys)}
		for _, err := range f.errs {
			row.violations = append(row.violations, "partial or failed group: "+err.Error())
		}
		free := inv.Free()
		row.kvasir = cell{idle: sumMap(free), pending: pendingOf(demand, row.placed)}
		row.violations = append(row.violations, greedyMisses(roles, demand, row.placed, free)...)
		row.violations = append(row.violations, wholeGroups(f, keys)...)
		used, _ := usage(roles, row.placed)

		keep, ok, err := bestPacking(countNodes, roles, demand, clipFloor(roles, prev, demand))
		if err != nil {
			return nil, nil, err
		}
		if ok {
			row.keep = cell{idle: sumMap(countNodes[0]) - keep.Used, pending: pendingOf(demand, keep.Counts)}
			if keep.Used < used {
				row.violations = append(row.violations, fmt.Sprintf("Kvasir uses %d, more than the best keeping running groups (%d): the search is wrong", used, keep.Used))
			}
		} else {
			row.violations = append(row.violations, "the running groups alone do not fit: the search is wrong")
		}
		repack, _, err := bestPacking(countNodes, roles, demand, nil)
		if err != nil {
			return nil, nil, err
		}
		row.repack = cell{idle: sumMap(countNodes[0]) - repack.Used, pending: pendingOf(demand, repack.Counts)}
		if repack.Used < used || (ok && repack.Used < keep.Used) {
			row.violations = append(row.violations, fmt.Sprintf("the best repacking uses %d, less than another placement: the search is wrong", repack.Used))
		}
		nodesBest, _, err := bestPacking(sc.nodes, roles, demand, nil)
		if err != nil {
			return nil, nil, err
		}
		row.onNodes = cell{idle: sumNodes(sc.nodes) - nodesBest.Used, pending: pendingOf(demand, nodesBest.Counts)}
		row.kvasirFitsNodes = fits(sc.nodes, roles, row.placed)
		rows = append(rows, row)
		prev = row.placed
	}
	return rows, roles, nil
}

// inventoryNode is an inventory's devices as one node (all free at the
// start of a scenario).
func inventoryNode(inv *autoscaler.Inventory) node { return node(inv.Free()) }

func sumMap(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func sumNodes(nodes []node) int {
	n := 0
	for _, nd := range nodes {
		n += sumMap(nd)
	}
	return n
}

// pendingOf is the groups wanted and not placed.
func pendingOf(demand []int, counts [][]int) int {
	p := 0
	for r, row := range counts {
		placed := 0
		for _, c := range row {
			placed += c
		}
		p += max(demand[r]-placed, 0)
	}
	return p
}

// greedyMisses names the pending groups that fit what is left free: Place
// should have placed them.
func greedyMisses(roles []packRole, demand []int, counts [][]int, free map[string]int) []string {
	var out []string
	for r, role := range roles {
		placed := 0
		for _, c := range counts[r] {
			placed += c
		}
		if placed >= demand[r] {
			continue
		}
		for _, v := range role.Variants {
			if take(maps.Clone(free), v.Need, 1) {
				out = append(out, fmt.Sprintf("a pending group of %s fits variant %q in what is free (%v)", role.Name, v.Name, free))
				break
			}
		}
	}
	return out
}

// wholeGroups checks that every group the fleet runs holds exactly its
// variant's devices.
func wholeGroups(f *fragFleet, keys []fleet.Key) []string {
	var out []string
	for _, key := range keys {
		for _, v := range f.variants[key] {
			for _, name := range f.running[key][v.Name] {
				if want := sumMap(v.Need); f.held[name] != want {
					out = append(out, fmt.Sprintf("group %s holds %d devices, its variant needs %d", name, f.held[name], want))
				}
			}
		}
	}
	return out
}

// clipFloor is the groups of prev that a step keeps: at most the demand,
// dropping from the dearest variant first (the last: RoleVariantsOf lists
// them cheapest first), as Place shrinks.
func clipFloor(roles []packRole, prev [][]int, demand []int) [][]int {
	out := clone2(prev)
	for r := range roles {
		total := 0
		for _, c := range out[r] {
			total += c
		}
		drop := total - max(demand[r], 0)
		for v := len(out[r]) - 1; v >= 0 && drop > 0; v-- {
			k := min(drop, out[r][v])
			out[r][v] -= k
			drop -= k
		}
	}
	return out
}

// worstStep is the step where Kvasir strands the most beyond the best
// repacking (the last of equals; on a tie at zero, the last step).
func worstStep(rows []fragRow) int {
	w := len(rows) - 1
	for i, r := range rows {
		if d := r.kvasir.stranded() - r.repack.stranded(); d > rows[w].kvasir.stranded()-rows[w].repack.stranded() {
			w = i
		}
	}
	return w
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

// describe says what one group of a role takes per variant.
func describe(r packRole) string {
	var parts []string
	for _, v := range r.Variants {
		var needs []string
		for _, res := range slices.Sorted(maps.Keys(v.Need)) {
			needs = append(needs, fmt.Sprintf("%d %s", v.Need[res]/max(v.Pods, 1), res))
		}
		s := fmt.Sprintf("%d pod(s) x %s", max(v.Pods, 1), strings.Join(needs, "+"))
		if v.Name != "" {
			s = fmt.Sprintf("%s: %s (cost %g)", v.Name, s, v.Cost)
		}
		parts = append(parts, s)
	}
	return r.Name + " = " + strings.Join(parts, " or ")
}

// roleCounts shows counts per role ("x 2+0, y 1").
func roleCounts(roles []packRole, counts [][]int) string {
	var parts []string
	for r, row := range counts {
		var cs []string
		for _, c := range row {
			cs = append(cs, strconv.Itoa(c))
		}
		parts = append(parts, roles[r].Name+" "+strings.Join(cs, "+"))
	}
	return strings.Join(parts, ", ")
}

func printScenario(n int, sc fragScenario, roles []packRole, rows []fragRow) {
	var sizes []string
	for _, nd := range sc.nodes {
		sizes = append(sizes, strconv.Itoa(sumMap(nd)))
	}
	fmt.Printf("\n%d. %s: %s\n   inventory %s (nodes %s)\n", n, sc.name, sc.about, sc.inventory, strings.Join(sizes, "+"))
	for _, r := range roles {
		fmt.Printf("   %s\n", describe(r))
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "   step\tdemand (groups)\tKvasir placed\tKvasir\tbest, keep\tbest, repack\tKvasir fits nodes\tbest on nodes\tnote")
	for s, r := range rows {
		fmt.Fprintf(tw, "   %d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s+1, demandString(roles, r.demand), roleCounts(roles, r.placed),
			r.kvasir, r.keep, r.repack, yesNo(r.kvasirFitsNodes), r.onNodes, sc.steps[s].note)
	}
	_ = tw.Flush()
}

func demandString(roles []packRole, demand []int) string {
	var parts []string
	for r, d := range demand {
		if d > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", roles[r].Name, d))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
